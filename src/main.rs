//! The `websocks` binary: everything lives in the library.

fn main() {
    std::process::exit(websocks::main());
}
