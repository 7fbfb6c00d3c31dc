# Everything one system needs. flake.nix calls this once per system, so nixpkgs is imported once
# per system and the same `pkgs` reaches packages, images, checks and the shell.
{ self, nixpkgs, crane, rust-overlay, system }:
let
  pkgs = import nixpkgs {
    inherit system;
    overlays = [ rust-overlay.overlays.default ];
  };
  inherit (pkgs) lib;

  # Static release binaries: musl for the host architecture.
  muslTarget = "${pkgs.stdenv.hostPlatform.parsed.cpu.name}-unknown-linux-musl";

  # The toolchain rust-toolchain.toml pins (1.95.0), plus the musl target. The host (gnu) target
  # is always part of a rust-overlay toolchain; the tests and clippy build for it.
  toolchain = (pkgs.rust-bin.fromRustupToolchainFile ../rust-toolchain.toml).override {
    targets = [ muslTarget ];
  };
  craneLib = (crane.mkLib pkgs).overrideToolchain toolchain;

  services = import ./services.nix;
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;
  revision = self.rev or self.dirtyRev or "dirty";

  # One Python for the tests (moto's server) and the shell (also kubernetes-validate, whose schema
  # files and jsonschema crates/xtask/schemas/validate.py uses and whose CLI `cargo xtask` looks for).
  python = pkgs.python3.withPackages (
    ps: [ ps.moto ps.kubernetes-validate ] ++ (ps.moto.optional-dependencies.server or [ ])
  );

  packages = import ./packages.nix { inherit pkgs lib craneLib muslTarget services version; };
  images = import ./images.nix {
    inherit pkgs lib services version revision;
    inherit (packages) binaries;
  };
  checks = import ./checks.nix {
    inherit pkgs lib craneLib services images python;
    inherit (packages) src testArgs testArtifacts;
  };
in
{
  inherit pkgs checks;
  packages = packages.binaries // images.byName // {
    images = images.all;
    default = images.all;
    # The signature policy push-images uses, for any other skopeo push of these images.
    push-policy = images.pushPolicy;
  };
  apps.push-images = {
    type = "app";
    program = lib.getExe images.push;
    meta.description = "Push every service image to <registry>/quilla/<service>:<version>";
  };
  shell = import ./shell.nix { inherit pkgs craneLib checks python; };
  # `nix fmt`: nixfmt over the tree (nixfmt-rfc-style is a deprecated alias of nixfmt).
  formatter = pkgs.nixfmt-tree;
}
