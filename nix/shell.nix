# `nix develop`: the pinned toolchain and every tool the README and xtask use.
{ pkgs, craneLib, checks }:
craneLib.devShell {
  inherit checks;
  packages = with pkgs; [
    cargo-nextest
    cargo-deny
    postgresql
    redis
    (python3.withPackages (ps: [ ps.moto ] ++ (ps.moto.optional-dependencies.server or [ ])))
    wrk
    skopeo
    kubectl
    kustomize
    prometheus.cli # promtool
    yamllint
    actionlint
    nixfmt-rfc-style
  ];
}
