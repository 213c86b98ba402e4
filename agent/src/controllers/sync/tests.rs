use super::*;

#[test]
fn duplicate_definitions_across_files_name_both_files() {
    let file = |path: &str| gitops::SourceFile {
        path: path.into(),
        text: "kind: configuration\nmeta:\n  group: app\n  name: a\nspec:\n  data: {}\n".into(),
    };
    let checkout = gitops::Checkout {
        commit: "c".into(),
        files: vec![file("one.yaml"), file("two.yaml")],
        pack: None,
    };
    let e = parse_checkout(&checkout, 1).unwrap_err().to_string();
    assert!(e.contains("two.yaml") && e.contains("one.yaml"), "{e}");
}
