//! Files generated from the code must be what the code generates now: a CRD that drifted from
//! the Rust types would install a schema the controller does not speak.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::path::Path;
use std::process::Command;

fn redis_pair_crd() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_redis-pair"))
        .arg("crd")
        .output()
        .expect("run redis-pair crd");
    assert!(
        output.status.success(),
        "redis-pair crd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the CRD is UTF-8")
}

fn committed(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn crds_redispair_yaml_is_what_redis_pair_crd_prints() {
    assert!(
        committed("crds/redispair.yaml") == redis_pair_crd(),
        "crds/redispair.yaml differs from `redis-pair crd`; regenerate it with \
         `cargo run -q -- crd | tee crds/redispair.yaml > charts/redis-pair/crds/redispair.yaml`"
    );
}

#[test]
fn redis_pair_crd_prints_only_yaml_of_one_crd() {
    let crd = redis_pair_crd();
    let documents = crd.matches("\nkind: ").count();
    assert_eq!(documents, 1, "one object");
    assert!(crd.contains("\nkind: CustomResourceDefinition\n"));
    assert!(crd.contains("  name: redispairs.redispair.io\n"));
}
