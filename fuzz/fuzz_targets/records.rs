//! The record codecs the store reads back (a damaged or hostile data dir must give an error,
//! never a panic): a user's checkpointed state, a decision, a learning record, a logged batch.
//! What decodes must encode and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trimtab_engine::bandits::record::LearnRecord;
use trimtab_engine::features::UserState;
use trimtab_engine::pipeline::Decision;
use trimtab_store::Batch;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Some(s) = UserState::decode(bytes) {
                let again = UserState::decode(&s.encode()).expect("a re-encoded state decodes");
                assert_eq!(again.encode(), s.encode());
            }
        }
        1 => {
            if let Some(d) = Decision::decode(bytes) {
                let again = Decision::decode(&d.encode()).expect("a re-encoded decision decodes");
                assert_eq!(again.encode(), d.encode());
            }
        }
        2 => {
            if let Some(r) = LearnRecord::decode(bytes) {
                let again = LearnRecord::decode(&r.encode()).expect("a re-encoded record decodes");
                assert_eq!(again.encode(), r.encode());
            }
        }
        _ => {
            if let Ok(b) = postcard::from_bytes::<Batch>(bytes) {
                let enc = postcard::to_allocvec(&b).expect("encode");
                let again: Batch = postcard::from_bytes(&enc).expect("a re-encoded batch decodes");
                assert_eq!(postcard::to_allocvec(&again).expect("encode"), enc);
            }
        }
    }
});
