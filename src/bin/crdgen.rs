//! Prints the `gitdeployments.git.dev` CRD as YAML: `cargo run --bin crdgen > crds/gitdeployments.git.dev.yaml`.
fn main() {
    print!("{}", gitdev::resource::crd_yaml());
}
