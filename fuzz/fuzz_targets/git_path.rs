//! Git tree paths (a gitops object's `directoryPath`) and `Pack.yaml`: no input panics; an
//! accepted path resolves to plain components that cannot leave the repository.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gitops::parse_pack(text);
    let Ok(parts) = gitops::normalize_directory(text) else {
        return;
    };
    assert!(!text.starts_with('/') && !text.starts_with('~'), "{text:?}");
    for part in &parts {
        assert!(
            !part.is_empty() && part != "." && part != "..",
            "{text:?} -> {parts:?}"
        );
        assert!(!part.contains('/') && !part.contains('\\'), "{text:?}");
        assert!(!part.eq_ignore_ascii_case(".git"), "{text:?}");
        assert!(!part.chars().any(char::is_control), "{text:?}");
    }
    // Normalizing the normalized path changes nothing.
    assert_eq!(
        gitops::normalize_directory(&parts.join("/")).as_ref().ok(),
        Some(&parts)
    );
});
