//! Every record read from a coordination store (the same bytes on ZooKeeper and etcd): any
//! bytes decode or are refused with an error, never a panic; a decoded record encodes to bytes
//! that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_cluster::records::{
    ClusterConfig, ControllerHistory, InstanceCapabilities, LeaderRecord, PartitionEpochs,
};
use rota_model::{
    CurrentState, ExternalView, IdealState, InstanceConfig, LiveInstance, Message, Record,
    ResourceConfig, StateModelSpec,
};

fn round_trip<R: Record + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(record) = R::decode(bytes) {
        let again = R::decode(&record.encode()).expect("an encoded record decodes");
        assert_eq!(again, record);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 13 {
        0 => round_trip::<InstanceConfig>(bytes),
        1 => round_trip::<LiveInstance>(bytes),
        2 => round_trip::<ResourceConfig>(bytes),
        3 => round_trip::<IdealState>(bytes),
        4 => round_trip::<CurrentState>(bytes),
        5 => round_trip::<ExternalView>(bytes),
        6 => round_trip::<Message>(bytes),
        7 => round_trip::<StateModelSpec>(bytes),
        8 => round_trip::<ClusterConfig>(bytes),
        9 => round_trip::<PartitionEpochs>(bytes),
        10 => round_trip::<LeaderRecord>(bytes),
        11 => round_trip::<ControllerHistory>(bytes),
        _ => round_trip::<InstanceCapabilities>(bytes),
    }
});
