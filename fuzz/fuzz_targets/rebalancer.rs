//! The rebalancer on arbitrary clusters: instances with zones, weights, tags and enabled flags,
//! resources of every built-in model, a previous assignment from another cluster. It never
//! panics, refuses only with an error, and what it returns keeps its constraints: at most the
//! replica count per partition, at most the model's bound of top states, only on eligible
//! instances; and it is a pure function (the same input, the same output).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::{InstanceConfig, ResourceConfig, StateModel};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

fn instances(b: &mut Bytes<'_>) -> Vec<InstanceConfig> {
    let n = b.next() % 16;
    (0..n)
        .map(|_| {
            let id = b.next() % 24;
            let mut i = InstanceConfig::new(format!("i{id}"));
            let flags = b.next();
            if flags & 1 == 1 {
                i = i.with_zone(format!("z{}", (flags >> 1) % 4));
            }
            i = i.with_weight(u32::from(b.next() % 4) * 50);
            i.enabled = flags & 0x40 == 0;
            if flags & 0x80 != 0 {
                i.tags.insert("t".into());
            }
            i
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let model_name = StateModel::BUILTINS[b.next() as usize % StateModel::BUILTINS.len()];
    let model = StateModel::builtin(model_name).unwrap();
    let partitions = u32::from(b.next() % 64) + 1;
    let replicas = u32::from(b.next() % 5) + 1;
    let mut resource = ResourceConfig::new("r", partitions, replicas, model_name);
    if b.next() % 4 == 0 {
        resource.instance_tag = Some("t".into());
    }
    let before = instances(&mut b);
    let after = instances(&mut b);
    let input = |instances, previous| RebalanceInput {
        resource: &resource,
        state_model: &model,
        instances,
        previous,
    };
    let Ok(previous) = rebalance(&input(&before[..], None)) else {
        return;
    };
    let Ok(next) = rebalance(&input(&after[..], Some(&previous))) else {
        return;
    };
    let again = rebalance(&input(&after[..], Some(&previous)));
    assert_eq!(again.as_ref(), Ok(&next), "not pure");
    let bound = model
        .bound(0)
        .resolve(replicas, after.len() as u32)
        .unwrap_or(u32::MAX) as usize;
    let top = model.top_state();
    for (p, intent) in next.partitions.iter().enumerate() {
        assert!(
            intent.replicas.len() <= replicas as usize,
            "partition {p}: {intent:?}"
        );
        let tops = intent.replicas.iter().filter(|(_, s)| s == top).count();
        assert!(
            tops <= bound.max(1),
            "partition {p}: {tops} {top} over bound {bound}"
        );
        for (i, _) in &intent.replicas {
            let eligible = after.iter().any(|a| {
                a.id == *i
                    && a.enabled
                    && a.weight > 0
                    && resource
                        .instance_tag
                        .as_ref()
                        .is_none_or(|t| a.tags.contains(t))
            });
            assert!(eligible, "partition {p} placed on {i}, not eligible");
        }
    }
});
