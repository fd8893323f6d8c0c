//! The configuration YAML through the loader `websocks check` uses
//! (websocks::fuzz::check_config): any text is accepted or refused with a
//! message naming the file, never a panic, and the same verdict twice.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let r = websocks::fuzz::check_config(text);
    if let Err(e) = &r {
        assert!(
            e.starts_with("/nonexistent-websocks-fuzz/websocks.yaml"),
            "{e}"
        );
    }
    assert_eq!(websocks::fuzz::check_config(text), r);
});
