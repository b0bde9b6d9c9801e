//! The Corefile reader and planner on any text: a plan or an error naming a file and line,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(corefile) = dns::corefile::parse(text, "Corefile", |name| {
        (name == "SET").then(|| "value".to_string())
    }) else {
        return;
    };
    let resolv = |_: &str| Ok(vec!["127.0.0.1:53".parse().unwrap()]);
    if let Ok(plan) = corefile.plan(&resolv)
        && let Some(k) = &plan.kubernetes
    {
        let _ = k.config(vec!["10.96.0.10".parse().unwrap()]);
    }
});
