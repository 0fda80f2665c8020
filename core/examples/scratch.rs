use rota_core::rebalancer::scenario::*;
use rota_core::*;
fn main() {
    let model = StateModel::builtin("MasterSlave").unwrap();
    for (n, change) in [
        (100, Change::Remove(7)),
        (100, Change::Add(1)),
        (100, Change::RemoveZone),
        (100, Change::None),
        (1000, Change::Add(1)),
        (1000, Change::Remove(1)),
    ] {
        let s = Scenario {
            instances: n,
            zones: 10,
            resource: ResourceConfig::new("tasks", 10240, 3, "MasterSlave"),
            change,
        };
        for st in [Strategy::Rota, Strategy::Modulo, Strategy::Ring] {
            let o = s.run(&model, st).unwrap();
            println!(
                "{n} {change:?} {st:?} {}",
                serde_json::to_string(&o).unwrap()
            );
        }
    }
}
