//! `vswitch-cni`: the CNI plugin (see `vswitch_cli::cni`).

fn main() {
    vswitch_cli::cni::main()
}
