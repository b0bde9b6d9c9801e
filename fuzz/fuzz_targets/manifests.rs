//! The manifests loader on any text, as YAML and as JSON: an error or objects, never a panic;
//! whatever loads can be indexed and answered from.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for file in ["fuzz.yaml", "fuzz.json"] {
        let Ok(loaded) = cache::manifests::parse(Path::new(file), text) else {
            continue;
        };
        let cache = cache::Cache::new(&[]);
        cache.apply(loaded.into_events());
        let config = dns::config::Config::default();
        let index = dns::index::Index::build(cache.current(), &config);
        let _ = index.next(cache.current(), &config);
    }
});
