# Everything one system needs, built once and shared by packages, images, checks and the shell.
{ self, nixpkgs, crane, rust-overlay, system }:
let
  pkgs = import nixpkgs {
    inherit system;
    overlays = [ rust-overlay.overlays.default ];
  };
  inherit (pkgs) lib;

  # Static binaries: musl for the host architecture.
  muslTarget = "${pkgs.stdenv.hostPlatform.parsed.cpu.name}-unknown-linux-musl";

  # The toolchain rust-toolchain.toml pins (1.95.0), plus the musl target.
  toolchain = (pkgs.rust-bin.fromRustupToolchainFile ../rust-toolchain.toml).override {
    targets = [ muslTarget ];
  };
  craneLib = (crane.mkLib pkgs).overrideToolchain toolchain;

  services = import ./services.nix;
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;
  revision = self.rev or self.dirtyRev or "dirty";

  packages = import ./packages.nix { inherit pkgs lib craneLib muslTarget services version; };
  images = import ./images.nix { inherit pkgs lib services version revision; binaries = packages.binaries; };
  checks = import ./checks.nix { inherit pkgs lib craneLib services images; inherit (packages) src commonArgs cargoArtifacts; };
in
{
  inherit pkgs;
  packages = packages.binaries // images.byName // {
    images = images.all;
    default = images.all;
  };
  apps = {
    push-images = {
      type = "app";
      program = lib.getExe images.push;
    };
  };
  inherit checks;
  shell = import ./shell.nix { inherit pkgs craneLib checks; };
}
