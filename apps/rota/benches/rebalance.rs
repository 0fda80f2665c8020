//! Rebalancer speed: 10,240 partitions x 3 replicas (MasterSlave) over 100 and 1,000 instances
//! in 10 zones, from scratch and after one instance joins or leaves.
//!
//! Run with `cargo bench -p rota --bench rebalance`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use criterion::{Criterion, criterion_group, criterion_main};
use rota::plan::scenario::{Change, Scenario, synthetic_instances};
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::{ResourceConfig, StateModel};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let model = StateModel::builtin("MasterSlave").unwrap();
    let resource = ResourceConfig::new("tasks", 10_240, 3, "MasterSlave");
    let mut group = c.benchmark_group("rebalance_10240x3");
    group.sample_size(20);
    for instances in [100, 1_000] {
        let before = synthetic_instances(0, instances, 10);
        let assign = |set: &[rota_model::InstanceConfig], previous| {
            rebalance(&RebalanceInput {
                resource: &resource,
                state_model: &model,
                instances: set,
                previous,
            })
            .unwrap()
        };
        let initial = assign(&before, None);
        group.bench_function(format!("{instances}_instances/from_scratch"), |b| {
            b.iter(|| black_box(assign(black_box(&before), None)))
        });
        for (name, change) in [
            ("join_one", Change::Add(1)),
            ("leave_one", Change::Remove(1)),
        ] {
            let scenario = Scenario {
                instances,
                zones: 10,
                resource: resource.clone(),
                change,
            };
            let after = scenario.changed_instances(&before);
            group.bench_function(format!("{instances}_instances/{name}"), |b| {
                b.iter(|| black_box(assign(black_box(&after), Some(&initial))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
