# `nix develop`: the pinned toolchain and every program `cargo xtask test` (and the README) runs,
# so its prerequisite check finds them all and never falls back to apt-get or pip.
{ pkgs, craneLib, checks, python }:
craneLib.devShell {
  # The checks' inputs too (cmake, PostgreSQL, Redis, promtool, jq, nix, …).
  inherit checks;

  packages = with pkgs; [
    cargo-nextest
    cargo-deny
    postgresql
    redis
    python # python3 with moto (moto_server) and kubernetes-validate (module and CLI)
    yamllint
    kubectl
    kustomize
    prometheus.cli # promtool
    nodejs # node and npm: `cargo xtask validate` runs `npm ci` for the CRD schema validator
    zizmor # GitHub Actions workflow audit
    actionlint
    skopeo
    wrk
    nixfmt # `nixfmt-rfc-style` is a deprecated alias of this
  ];

  # `cargo xtask images` links the gnu target with `+crt-static`: that needs glibc's static
  # libraries (libc.a, libm.a, …), which nixpkgs keeps in glibc's `static` output. As a build
  # input its lib/ is added to the linker's search path (NIX_LDFLAGS).
  buildInputs = [ pkgs.glibc.static ];
}
