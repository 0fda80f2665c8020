//! Replica placement over node indices: which nodes hold each partition.
//!
//! Every node has a range `[lo, hi]`: the floor and the ceiling of its fair share. Any placement
//! with every node inside its range is even, so the algorithm only moves what leaves a node
//! outside it:
//! 1. **keep** every previous replica that is still on an eligible node, fits the partition's
//!    replica count and respects the zone quota;
//! 2. **fill** free slots with the nodes (and zones) furthest below their range, so remaining
//!    demand never concentrates in a few zones that a partition may already use;
//! 3. **shed**: a node above `hi` passes replicas to nodes below `hi` (those below `lo` first),
//!    preferring replicas that are not the partition's top state;
//! 4. **gather**: a node still below `lo` takes replicas from nodes above `lo`.
//!
//! Steps 3 and 4 move one replica per unit of imbalance. Where the zone rules allow no direct
//! move, a short chain of moves (breadth-first search) carries the imbalance along; chains and
//! stuck fills are the only moves beyond the lower bound, and the property tests measure them.

use super::buckets::MaxBuckets;
use super::shares::Ranged;
use std::collections::VecDeque;

/// The placement problem, over nodes `0..zone_of.len()`.
pub(crate) struct Problem<'a> {
    pub partitions: usize,
    /// Replicas per partition (already capped by the node count).
    pub replicas: usize,
    pub zone_of: &'a [usize],
    /// Per zone, how many replicas of one partition it may hold.
    pub zone_quota: &'a [usize],
    /// Per node, the fewest and the most replicas it may hold.
    pub range: &'a [(u64, u64)],
    /// Per partition, the previous holders that are still eligible, in preference order.
    pub previous: &'a [Vec<usize>],
    /// Per partition, the previous top-state holders that are still eligible.
    pub previous_top: &'a [Vec<usize>],
    /// Per node, whether it led more partitions before than its fair share of top states now.
    /// A replica moved into a partition led by such a node can take the top state from it
    /// directly, so such partitions are passed on first.
    pub top_rich: &'a [bool],
    pub seed: u64,
}

struct State<'p, 'a> {
    problem: &'p Problem<'a>,
    parts: Vec<Vec<usize>>,
    node_parts: Vec<Vec<usize>>,
}

impl Ranged for State<'_, '_> {
    fn count(&self, node: usize) -> u64 {
        self.node_parts[node].len() as u64
    }

    fn range(&self, node: usize) -> (u64, u64) {
        self.problem.range[node]
    }
}

impl State<'_, '_> {
    fn nodes(&self) -> usize {
        self.problem.zone_of.len()
    }

    /// Priority of a node as a receiver: positive while below `hi`, and above 1 while below `lo`.
    fn room(&self, node: usize) -> u64 {
        (self.lo(node) + self.hi(node)).saturating_sub(2 * self.count(node))
    }

    /// Whether `node` may join partition `p`, if `leaving` leaves it at the same time.
    fn fits(&self, p: usize, node: usize, leaving: Option<usize>) -> bool {
        let zone = self.problem.zone_of[node];
        let members = &self.parts[p];
        if members.contains(&node) {
            return false;
        }
        let same_zone = members
            .iter()
            .filter(|&&m| Some(m) != leaving && self.problem.zone_of[m] == zone)
            .count();
        same_zone < self.problem.zone_quota[zone]
    }

    fn add(&mut self, p: usize, node: usize) {
        self.parts[p].push(node);
        self.node_parts[node].push(p);
    }

    fn move_replica(&mut self, p: usize, from: usize, to: usize) {
        // The newcomer takes the leaver's place, keeping the partition's order.
        if let Some(slot) = self.parts[p].iter_mut().find(|m| **m == from) {
            *slot = to;
        }
        self.node_parts[from].retain(|&q| q != p);
        self.node_parts[to].push(p);
    }

    /// Partitions of `node`, those it does not lead first (moving those changes no top state).
    /// Among those, partitions led by a node with tops to spare come first.
    fn sheddable(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        let tops = &self.problem.previous_top;
        let led = move |p: &usize| tops[*p].contains(&node);
        let rich = move |p: &usize| tops[*p].iter().any(|&t| self.problem.top_rich[t]);
        let parts = &self.node_parts[node];
        let (first, second) = (
            move |p: &&usize| !led(p) && rich(p),
            move |p: &&usize| !led(p) && !rich(p),
        );
        parts
            .iter()
            .filter(first)
            .chain(parts.iter().filter(second))
            .chain(parts.iter().filter(move |p| led(p)))
            .copied()
    }

    /// Applies a chain of `(partition, from, to)` moves, stopping at the first that no longer fits.
    fn apply_chain(&mut self, chain: Vec<(usize, usize, usize)>) -> bool {
        for (p, from, to) in chain {
            if !self.parts[p].contains(&from) || !self.fits(p, to, Some(from)) {
                return false;
            }
            self.move_replica(p, from, to);
        }
        true
    }
}

/// Places replicas; returns the holders of each partition, previous holders first in their
/// previous order.
pub(crate) fn place(problem: &Problem<'_>) -> Vec<Vec<usize>> {
    let nodes = problem.zone_of.len();
    let mut state = State {
        problem,
        parts: vec![Vec::with_capacity(problem.replicas); problem.partitions],
        node_parts: vec![Vec::new(); nodes],
    };
    keep(&mut state);
    fill(&mut state);
    shed(&mut state);
    gather(&mut state);
    state.parts
}

fn keep(state: &mut State<'_, '_>) {
    let problem = state.problem;
    for p in 0..problem.partitions {
        for &node in &problem.previous[p] {
            if state.parts[p].len() < problem.replicas && state.fits(p, node, None) {
                state.add(p, node);
            }
        }
    }
}

fn fill(state: &mut State<'_, '_>) {
    let problem = state.problem;
    let mut zone_members: Vec<Vec<usize>> = vec![Vec::new(); problem.zone_quota.len()];
    for (node, &zone) in problem.zone_of.iter().enumerate() {
        zone_members[zone].push(node);
    }
    let mut node_queues: Vec<MaxBuckets> = zone_members
        .iter()
        .enumerate()
        .map(|(z, members)| {
            let keys: Vec<u64> = members.iter().map(|&n| state.room(n)).collect();
            MaxBuckets::new(&keys, problem.seed.wrapping_add(z as u64))
        })
        .collect();
    let zone_keys: Vec<u64> = zone_members
        .iter()
        .map(|m| m.iter().map(|&n| state.room(n)).sum())
        .collect();
    let mut zone_queue = MaxBuckets::new(&zone_keys, problem.seed);

    // Partitions missing the most replicas first: they have the fewest constraints left to meet.
    let mut order: Vec<usize> = (0..problem.partitions)
        .filter(|&p| state.parts[p].len() < problem.replicas)
        .collect();
    order.sort_by_key(|&p| (state.parts[p].len(), p));
    for p in order {
        while state.parts[p].len() < problem.replicas {
            let members = &state.parts[p];
            let chosen = zone_queue
                .find(|z| {
                    let used = members.iter().filter(|&&m| problem.zone_of[m] == z).count();
                    used < problem.zone_quota[z]
                        && node_queues[z]
                            .find(|k| !members.contains(&zone_members[z][k]))
                            .is_some()
                })
                .map(|z| {
                    let k = node_queues[z]
                        .find(|k| !members.contains(&zone_members[z][k]))
                        .expect("checked above");
                    (z, k)
                });
            let node = match chosen {
                Some((z, k)) => zone_members[z][k],
                None => {
                    // Stuck: every node with room conflicts with this partition. Place the fitting
                    // node least over its range; shedding evens it out.
                    (0..state.nodes())
                        .filter(|&n| state.fits(p, n, None))
                        .min_by_key(|&n| (state.count(n) + 1).saturating_sub(state.hi(n)))
                        .expect("zone quotas always leave a fitting node")
                }
            };
            let (z, k) = (
                problem.zone_of[node],
                zone_members[problem.zone_of[node]]
                    .iter()
                    .position(|&m| m == node)
                    .expect("member of its zone"),
            );
            let before = state.room(node);
            state.add(p, node);
            let after = state.room(node);
            node_queues[z].set(k, after);
            zone_queue.set(z, zone_queue.key(z) - (before - after));
        }
    }
}

/// Nodes above `hi` pass replicas to nodes below `hi`.
fn shed(state: &mut State<'_, '_>) {
    let nodes = state.nodes();
    let rooms: Vec<u64> = (0..nodes).map(|n| state.room(n)).collect();
    let mut receivers = MaxBuckets::new(&rooms, state.problem.seed.rotate_left(17));
    for giver in 0..nodes {
        let mut failures = 0;
        while state.count(giver) > state.hi(giver) && failures <= 3 {
            let direct = state.sheddable(giver).find_map(|p| {
                receivers
                    .find(|n| state.fits(p, n, Some(giver)))
                    .map(|to| (p, to))
            });
            if let Some((p, to)) = direct {
                state.move_replica(p, giver, to);
                receivers.set(to, state.room(to));
                continue;
            }
            // Give up on this node if no chain exists: the checks will report it.
            let Some(chain) = shed_chain(state, giver) else {
                break;
            };
            if !state.apply_chain(chain) {
                failures += 1;
            }
            for n in 0..nodes {
                receivers.set(n, state.room(n));
            }
        }
    }
}

/// A chain `giver -p1-> a -p2-> b ... -> receiver` of single moves ending at a node below `hi`,
/// returned receiver end first so every intermediate node gives before it receives.
fn shed_chain(state: &State<'_, '_>, giver: usize) -> Option<Vec<(usize, usize, usize)>> {
    let nodes = state.nodes();
    let links = |from| {
        let targets = move |p| (0..nodes).map(move |to| (p, to));
        state.sheddable(from).flat_map(targets)
    };
    let fits = |p, from, to| state.fits(p, to, Some(from));
    let (parent, end) = breadth_first(nodes, giver, links, fits, |to| {
        state.count(to) < state.hi(to)
    })?;
    Some(unwind(&parent, end, |prev, p, at| (p, prev, at)))
}

/// Nodes below `lo` take replicas from nodes above `lo`.
fn gather(state: &mut State<'_, '_>) {
    for taker in 0..state.nodes() {
        let mut failures = 0;
        while state.count(taker) < state.lo(taker) && failures <= 3 {
            // First from a non-leader of a partition led by a node with tops to spare (the taker
            // can then take that top directly), then from anyone above `lo`.
            let tops = &state.problem.previous_top;
            let rich = |p: usize| tops[p].iter().any(|&t| state.problem.top_rich[t]);
            let source = |p: usize, preferred: bool| {
                state.parts[p]
                    .iter()
                    .copied()
                    .filter(|&k| state.count(k) > state.lo(k))
                    .filter(|k| !preferred || (rich(p) && !tops[p].contains(k)))
                    .find(|&k| state.fits(p, taker, Some(k)))
                    .map(|k| (p, k))
            };
            let partitions = 0..state.problem.partitions;
            let direct = partitions
                .clone()
                .find_map(|p| source(p, true))
                .or_else(|| partitions.clone().find_map(|p| source(p, false)));
            if let Some((p, from)) = direct {
                state.move_replica(p, from, taker);
                continue;
            }
            let Some(chain) = gather_chain(state, taker) else {
                break;
            };
            if !state.apply_chain(chain) {
                failures += 1;
            }
        }
    }
}

/// A chain `source -p1-> a -p2-> ... -> taker` where `source` is above `lo`, found backwards from
/// the taker and returned source end first, so every intermediate node receives before it gives.
fn gather_chain(state: &State<'_, '_>, taker: usize) -> Option<Vec<(usize, usize, usize)>> {
    let links = |_| {
        let sources = |p: usize| state.parts[p].iter().map(move |&from| (p, from));
        (0..state.problem.partitions).flat_map(sources)
    };
    let fits = |p, to, from| state.fits(p, to, Some(from));
    let (parent, end) = breadth_first(state.nodes(), taker, links, fits, |from| {
        state.count(from) > state.lo(from)
    })?;
    Some(unwind(&parent, end, |next, p, at| (p, at, next)))
}

/// For each node a search reached, the node it came from and the partition of that hop.
type LinksBack = Vec<Option<(usize, usize)>>;

/// Searches breadth first from `root` for a node `goal` accepts. `links(near)` lists the hops
/// out of `near` as `(partition, far)`; `usable(partition, near, far)` says whether a hop may be
/// taken, and is asked only of nodes not reached yet. Returns each reached node's link back
/// (`(near, partition)`), for [`unwind`], and the node found.
fn breadth_first<I: Iterator<Item = (usize, usize)>>(
    nodes: usize,
    root: usize,
    links: impl Fn(usize) -> I,
    usable: impl Fn(usize, usize, usize) -> bool,
    goal: impl Fn(usize) -> bool,
) -> Option<(LinksBack, usize)> {
    let mut parent: LinksBack = vec![None; nodes];
    let mut seen = vec![false; nodes];
    seen[root] = true;
    let mut queue = VecDeque::from([root]);
    while let Some(near) = queue.pop_front() {
        for (p, far) in links(near) {
            if seen[far] || !usable(p, near, far) {
                continue;
            }
            seen[far] = true;
            parent[far] = Some((near, p));
            if goal(far) {
                return Some((parent, far));
            }
            queue.push_back(far);
        }
    }
    None
}

/// Follows parent links from `end` back to the search root, building one move per link.
fn unwind(
    parent: &[Option<(usize, usize)>],
    end: usize,
    step: impl Fn(usize, usize, usize) -> (usize, usize, usize),
) -> Vec<(usize, usize, usize)> {
    let mut chain = Vec::new();
    let mut at = end;
    while let Some((prev, p)) = parent[at] {
        chain.push(step(prev, p, at));
        at = prev;
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_scratch_meets_ranges_and_zone_quotas() {
        let zone_of = [0, 0, 1, 1, 2, 2];
        let range = [(5, 5); 6];
        let empty = vec![Vec::new(); 10];
        let problem = Problem {
            partitions: 10,
            replicas: 3,
            zone_of: &zone_of,
            zone_quota: &[1, 1, 1],
            range: &range,
            previous: &empty,
            previous_top: &empty,
            top_rich: &[false; 6],
            seed: 1,
        };
        let parts = place(&problem);
        let mut counts = [0; 6];
        for p in &parts {
            let mut zones: Vec<usize> = p.iter().map(|&n| zone_of[n]).collect();
            zones.sort();
            assert_eq!(zones, vec![0, 1, 2]);
            for &n in p {
                counts[n] += 1;
            }
        }
        assert_eq!(counts, [5; 6]);
    }
}
