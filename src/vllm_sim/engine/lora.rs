//! LoRA adapter residency: a waiting request's adapter is loaded before it runs (its load time
//! added to the step), evicting the least recently used adapter no running request uses when
//! all `max_loras` slots are taken; while none is free the request waits.

use std::collections::HashSet;

use super::Engine;

impl Engine {
    /// Whether waiting request `w` can run now as far as its adapter goes, loading it if needed.
    pub(super) fn lora_ready(&mut self, w: usize, now: f64) -> LoraReady {
        let Some(lora) = self.waiting[w].req.lora.clone() else {
            return LoraReady::Yes { load_cost: 0.0 };
        };
        if self.loaded_loras.iter().any(|(n, _)| *n == lora) {
            return LoraReady::Yes { load_cost: 0.0 };
        }
        if (self.loaded_loras.len() as u32) >= self.profile.max_loras {
            // Evict the least recently used adapter that no running request uses.
            let busy: HashSet<&String> = self
                .running
                .iter()
                .filter_map(|s| s.req.lora.as_ref())
                .collect();
            let idle = self
                .loaded_loras
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| !busy.contains(n))
                .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
                .map(|(i, _)| i);
            match idle {
                Some(i) => {
                    self.loaded_loras.remove(i);
                }
                None => return LoraReady::No,
            }
        }
        self.loaded_loras.push((lora, now));
        LoraReady::Yes {
            load_cost: self.profile.lora_load_time,
        }
    }
}

/// Whether a request's adapter lets it run, and the seconds its loading adds to the step.
pub(super) enum LoraReady {
    Yes { load_cost: f64 },
    No,
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Engine, EngineRequest};
    use crate::vllm_sim::profile::profile;

    #[test]
    fn lora_adapters_wait_while_all_slots_are_busy() {
        let mut p = profile("llama-8b-h100").unwrap();
        p.max_loras = 1;
        let mut engine = Engine::new(p.clone());
        let with = |id, lora: &str| EngineRequest {
            lora: Some(lora.to_string()),
            ..request(id, 32, 5, id)
        };
        engine.submit(with(1, "a"), 0.0);
        engine.submit(with(2, "b"), 0.0);
        engine.submit(request(3, 32, 5, 3), 0.0);
        let step = engine.step(0.0).unwrap();
        // "a" loads (cost added), "b" must wait, the plain request passes it.
        assert!((step.end - (p.lora_load_time + p.step_time(64, 0, 0))).abs() < 1e-12);
        let stats = engine.stats();
        assert_eq!(stats.running_loras, vec!["a".to_string()]);
        assert_eq!(stats.waiting_loras, vec!["b".to_string()]);
        let steps = run(&mut engine, step.end);
        assert_eq!(finished(&steps).len(), 3);
        assert_eq!(engine.stats().loaded_loras, vec!["b".to_string()]);
    }
}
