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

/// Round-trips the rest of `data` as the record type its first byte picks, by place in the list.
macro_rules! round_trip_one_of {
    ($data:expr; $($record:ty),+ $(,)?) => {{
        let Some((&kind, bytes)) = $data.split_first() else {
            return;
        };
        let round_trips: &[fn(&[u8])] = &[$(round_trip::<$record>),+];
        round_trips[usize::from(kind) % round_trips.len()](bytes);
    }};
}

fuzz_target!(|data: &[u8]| {
    round_trip_one_of!(data;
        InstanceConfig, LiveInstance, ResourceConfig, IdealState, CurrentState, ExternalView,
        Message, StateModelSpec, ClusterConfig, PartitionEpochs, LeaderRecord, ControllerHistory,
        InstanceCapabilities);
});
