//! What an operator drops into the definition dirs and the model registry: experiment and
//! bandit definitions (TOML, then validation), a rule's source (compiled by the sandboxed
//! engine), a model card (JSON) and model weights (safetensors). Each must be refused with an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trimtab_engine::bandits::def::BanditDef;
use trimtab_engine::experiments::def::{parse_toml, ExperimentDef};
use trimtab_learn::model::{Architecture, ClickModel, ModelCard};

fn rules() -> &'static trimtab_rules::Rules {
    static RULES: std::sync::OnceLock<trimtab_rules::Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let dir = std::env::temp_dir().join("trimtab-fuzz-rules");
        let _ = std::fs::create_dir_all(&dir);
        trimtab_rules::Rules::load(&dir, trimtab_rules::RuleLimits::default()).expect("rules")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(d) = parse_toml::<ExperimentDef>(text) {
                    let _ = d.validate();
                }
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(d) = parse_toml::<BanditDef>(text) {
                    let _ = d.validate();
                }
            }
        }
        2 => {
            if let Ok(src) = std::str::from_utf8(bytes) {
                let _ = rules().compile_condition("fuzz", src);
            }
        }
        3 => {
            let _ = serde_json::from_slice::<ModelCard>(bytes);
        }
        _ => {
            let arch = Architecture {
                input: 4,
                hidden: vec![3],
                dropout: 0.0,
            };
            let _ = ClickModel::from_safetensors(bytes, arch);
        }
    }
});
