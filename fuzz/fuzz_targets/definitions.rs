//! Definitions YAML (`smrctl apply -f`, `POST /objects` with YAML, gitops files): no input
//! panics the parser; what it accepts is valid and prints back to YAML that parses to the same
//! objects (`get -o yaml` then `apply` changes nothing).
#![no_main]

use agent::definitions::{parse_str, to_yaml, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = parse_str("fuzz.yaml", text) else {
        return;
    };
    for object in &objects {
        if let Err(e) = validate(object) {
            panic!("parse_str accepted an invalid object: {e}");
        }
    }
    let yaml = to_yaml(&objects).expect("accepted objects print as YAML");
    let again = match parse_str("printed.yaml", &yaml) {
        Ok(again) => again,
        Err(e) => panic!("printed YAML does not parse: {e}\n{yaml}"),
    };
    assert_eq!(
        objects, again,
        "YAML round trip changed the objects:\n{yaml}"
    );
});
