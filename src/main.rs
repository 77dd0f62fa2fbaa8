fn main() {
    std::process::exit(lazycrypt::cli::main());
}
