//! Image references: docker's grammar in the registry client and in the
//! store's tag check; normalizing is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::oci::Reference;
use rbuild::store::check_reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let again = Reference::parse(&r.to_string()).expect("a normalized name parses");
        assert_eq!(again, r);
    }
    let _ = check_reference(s);
});
