# The release `surge` a bench script runs (sourced; needs ROOT and `log`): $SURGE_BIN
# when set, otherwise built with cargo and taken from cargo's target directory (so
# CARGO_TARGET_DIR is honoured). Sets SURGE_BIN; exits when there is no binary.
surge_release_bin() {
    if [[ -n ${SURGE_BIN:-} ]]; then
        log "using SURGE_BIN=$SURGE_BIN"
    else
        log "building surge (release)"
        cargo build --release --quiet -p surge-api --bin surge
        local target_dir
        target_dir=$(cargo metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        SURGE_BIN="${target_dir:-${CARGO_TARGET_DIR:-$ROOT/target}}/release/surge"
    fi
    [[ -x $SURGE_BIN ]] || { echo "no surge binary at $SURGE_BIN" >&2; exit 1; }
}

# For the scripts that compare binaries given as name=path arguments: with none,
# the release build, as `surge=<path>` (built first; cargo's output on stderr).
release_binary_spec() {
    log "building the release surge"
    cargo build --release -p surge-api >&2
    echo "surge=${CARGO_TARGET_DIR:-$ROOT/target}/release/surge"
}
