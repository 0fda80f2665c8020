//! Top-state selection: which holders of each partition get the top state (MASTER, LEADER).
//!
//! Moving a top state to another holder of the same partition is a state transition, not a data
//! copy, so tops are balanced after replicas are placed, with the same range idea as placement:
//! every node's top count must end within `[lo, hi]`, the floor and ceiling of its fair share.
//! 1. keep every previous top that still holds its partition;
//! 2. give each orphaned partition to the co-holder with the most room;
//! 3. nodes above `hi` hand tops to co-holders below `hi` (below `lo` first);
//! 4. nodes below `lo` take tops from co-holders above `lo`.
//!
//! Steps 3 and 4 fall back to short chains found by breadth-first search, cheap here because a
//! node leads few partitions and each has few holders.

use super::shares::Ranged;
use std::collections::VecDeque;

pub(crate) struct TopProblem<'a> {
    /// Holders of each partition.
    pub parts: &'a [Vec<usize>],
    /// How many holders of each partition take the top state.
    pub top_count: &'a [usize],
    /// Per node, the fewest and the most tops it may hold.
    pub range: &'a [(u64, u64)],
    /// Per partition, the previous top holders.
    pub previous_top: &'a [Vec<usize>],
}

/// A follower that could take a partition's top state, as an ordered value (smaller is
/// better): the field order is the priority (the least full first), then its rank among the
/// partition's replicas, a deterministic tie-break; the node rides along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Receiver {
    fullness: i64,
    rank: usize,
    node: usize,
}

struct Tops<'p, 'a> {
    problem: &'p TopProblem<'a>,
    tops: Vec<Vec<usize>>,
    node_tops: Vec<Vec<usize>>,
    /// Partitions each node holds without leading them.
    node_follows: Vec<Vec<usize>>,
}

impl Tops<'_, '_> {
    /// Whether `node` holds more tops than its range allows (shedding) or fewer (gathering).
    fn off_balance(&self, node: usize, direction: Direction) -> bool {
        match direction {
            Direction::Shed => self.count(node) > self.hi(node),
            Direction::Gather => self.count(node) < self.lo(node),
        }
    }

    /// One hand-over `(partition, from, to)` that brings `node` toward its range at once:
    /// shedding, a top of its to a holder below `hi`; gathering, a top it follows from a leader
    /// above `lo`.
    fn direct_move(&self, node: usize, direction: Direction) -> Option<(usize, usize, usize)> {
        match direction {
            Direction::Shed => self.led(node).find_map(|p| {
                self.best_receiver(p, |n| self.count(n) < self.hi(n))
                    .map(|to| (p, node, to))
            }),
            Direction::Gather => self.node_follows[node].iter().find_map(|&p| {
                self.tops[p]
                    .iter()
                    .copied()
                    .find(|&k| self.count(k) > self.lo(k))
                    .map(|from| (p, from, node))
            }),
        }
    }

    /// Lower is a better receiver: negative below `hi`, below -1 under `lo`.
    fn fullness(&self, node: usize) -> i64 {
        2 * self.count(node) as i64 - (self.lo(node) + self.hi(node)) as i64
    }

    /// The follower of `p` (among those `eligible` lets through) best placed to take a top
    /// state: see [`Receiver`].
    fn best_receiver(&self, p: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.followers(p)
            .enumerate()
            .filter(|&(_, n)| eligible(n))
            .map(|(rank, node)| Receiver {
                fullness: self.fullness(node),
                rank,
                node,
            })
            .min()
            .map(|r| r.node)
    }

    fn grant(&mut self, p: usize, node: usize) {
        self.tops[p].push(node);
        self.node_tops[node].push(p);
        self.node_follows[node].retain(|&q| q != p);
    }

    fn hand_over(&mut self, p: usize, from: usize, to: usize) {
        if let Some(slot) = self.tops[p].iter_mut().find(|n| **n == from) {
            *slot = to;
        }
        self.node_tops[from].retain(|&q| q != p);
        self.node_follows[from].push(p);
        self.node_tops[to].push(p);
        self.node_follows[to].retain(|&q| q != p);
    }

    /// Holders of `p` that are not top in it.
    fn followers(&self, p: usize) -> impl Iterator<Item = usize> + '_ {
        self.problem.parts[p]
            .iter()
            .copied()
            .filter(move |n| !self.tops[p].contains(n))
    }

    /// Partitions `node` leads, those it did not lead before first (handing those over changes
    /// nothing already in place).
    fn led(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        let fresh = move |p: &usize| !self.problem.previous_top[*p].contains(&node);
        let led = &self.node_tops[node];
        led.iter()
            .filter(move |p| fresh(p))
            .chain(led.iter().filter(move |p| !fresh(p)))
            .copied()
    }

    fn apply_chain(&mut self, chain: Vec<(usize, usize, usize)>) -> bool {
        for (p, from, to) in chain {
            if !self.tops[p].contains(&from) || self.tops[p].contains(&to) {
                return false;
            }
            self.hand_over(p, from, to);
        }
        true
    }
}

impl Ranged for Tops<'_, '_> {
    fn count(&self, node: usize) -> u64 {
        self.node_tops[node].len() as u64
    }

    fn range(&self, node: usize) -> (u64, u64) {
        self.problem.range[node]
    }
}

/// Returns, per partition, its top holders.
pub(crate) fn choose_tops(problem: &TopProblem<'_>, nodes: usize) -> Vec<Vec<usize>> {
    let partitions = problem.parts.len();
    let mut node_follows = vec![Vec::new(); nodes];
    for (p, holders) in problem.parts.iter().enumerate() {
        for &n in holders {
            node_follows[n].push(p);
        }
    }
    let mut state = Tops {
        problem,
        tops: vec![Vec::new(); partitions],
        node_tops: vec![Vec::new(); nodes],
        node_follows,
    };
    for p in 0..partitions {
        for &n in &problem.previous_top[p] {
            if state.tops[p].len() < problem.top_count[p] && problem.parts[p].contains(&n) {
                state.grant(p, n);
            }
        }
    }
    for p in 0..partitions {
        while state.tops[p].len() < problem.top_count[p] {
            let best = state
                .best_receiver(p, |_| true)
                .expect("a partition has at least as many holders as tops");
            state.grant(p, best);
        }
    }
    for direction in [Direction::Shed, Direction::Gather] {
        for node in 0..nodes {
            let mut failures = 0;
            while state.off_balance(node, direction) && failures <= 3 {
                if let Some((p, from, to)) = state.direct_move(node, direction) {
                    state.hand_over(p, from, to);
                    continue;
                }
                let Some(chain) = search(&state, node, nodes, direction) else {
                    break;
                };
                failures += usize::from(!state.apply_chain(chain));
            }
        }
    }
    state.tops
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From a node above `hi`, forwards to a node below `hi`.
    Shed,
    /// From a node below `lo`, backwards to a node above `lo`.
    Gather,
}

/// Breadth-first search for a chain of hand-overs; returns `(partition, from, to)` moves in the
/// order to apply them (each intermediate node gives before it receives when shedding, receives
/// before it gives when gathering).
fn search(
    state: &Tops<'_, '_>,
    root: usize,
    nodes: usize,
    direction: Direction,
) -> Option<Vec<(usize, usize, usize)>> {
    let mut parent: Vec<Option<(usize, usize)>> = vec![None; nodes];
    let mut seen = vec![false; nodes];
    seen[root] = true;
    let mut queue = VecDeque::from([root]);
    while let Some(at) = queue.pop_front() {
        // Shed: `at` hands one of its tops to a follower. Gather: `at` takes a top it follows.
        let edges: Vec<(usize, usize)> = match direction {
            Direction::Shed => state
                .led(at)
                .flat_map(|p| state.followers(p).map(move |n| (p, n)))
                .collect(),
            Direction::Gather => state.node_follows[at]
                .iter()
                .flat_map(|&p| state.tops[p].iter().map(move |&n| (p, n)))
                .collect(),
        };
        for (p, next) in edges {
            if seen[next] {
                continue;
            }
            seen[next] = true;
            parent[next] = Some((at, p));
            let done = match direction {
                Direction::Shed => state.count(next) < state.hi(next),
                Direction::Gather => state.count(next) > state.lo(next),
            };
            if done {
                let mut chain = Vec::new();
                let mut cur = next;
                while let Some((prev, p)) = parent[cur] {
                    chain.push(match direction {
                        Direction::Shed => (p, prev, cur),
                        Direction::Gather => (p, cur, prev),
                    });
                    cur = prev;
                }
                return Some(chain);
            }
            queue.push_back(next);
        }
    }
    None
}
