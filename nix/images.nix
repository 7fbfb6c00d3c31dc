# Distroless images with dockerTools.streamLayeredImage, described once in nix/image.toml (which
# `cargo xtask images` reads too). The image is one layer holding real files and nothing else:
#   <binary>      the static service binary (0755)
#   <ca_bundle>   the CA certificates (0644)
#   /etc/passwd, /etc/group   root and the non-root user (0644)
# plus their parent directories (0755), all owned by 0:0. No /nix/store, no symlinks, no shell.
{ pkgs, lib, services, binaries, version, revision }:
let
  # nix/image.toml with `{service}` replaced by the service's name in every string.
  describe =
    name:
    let
      substitute =
        value:
        if builtins.isString value then
          builtins.replaceStrings [ "{service}" ] [ name ] value
        else if builtins.isList value then
          map substitute value
        else if builtins.isAttrs value then
          lib.mapAttrs (_: substitute) value
        else
          value;
    in
    substitute (lib.importTOML ./image.toml);

  # Checked at evaluation: the environment tells the service the ports the image exposes.
  assertPorts =
    d:
    assert lib.assertMsg (
      d.env.QUILLA_SERVER__PORT or null == toString d.port
    ) "nix/image.toml: env.QUILLA_SERVER__PORT must equal port (${toString d.port})";
    assert lib.assertMsg (
      d.env.QUILLA_SERVER__ADMIN_PORT or null == toString d.admin_port
    ) "nix/image.toml: env.QUILLA_SERVER__ADMIN_PORT must equal admin_port (${toString d.admin_port})";
    d;

  # Absolute path → the relative paths of its parent directories, e.g.
  # "/etc/ssl/certs/x" → [ "etc" "etc/ssl" "etc/ssl/certs" ].
  parentsOf =
    path:
    let
      parts = lib.init (lib.filter (part: part != "") (lib.splitString "/" path));
    in
    lib.imap1 (n: _: lib.concatStringsSep "/" (lib.take n parts)) parts;

  # The layout of one service's image, shared by the image and its check (checks.nix).
  layoutOf =
    name:
    let
      d = assertPorts (describe name);
      files = [
        { path = d.binary; mode = "0755"; source = lib.getExe binaries.${name}; }
        { path = d.ca_bundle; mode = "0644"; source = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"; }
        {
          path = "/etc/passwd";
          mode = "0644";
          source = pkgs.writeText "passwd" ''
            root:x:0:0:root:/root:/sbin/nologin
            ${d.user_name}:x:${toString d.user}:${toString d.group}:${d.user_name}:/home/${d.user_name}:/sbin/nologin
          '';
        }
        {
          path = "/etc/group";
          mode = "0644";
          source = pkgs.writeText "group" ''
            root:x:0:
            ${d.user_name}:x:${toString d.group}:
          '';
        }
      ];
      directories = lib.unique (lib.concatMap (file: parentsOf file.path) files);
      nanoseconds = seconds: seconds * 1000000000;
    in
    {
      inherit files directories;
      config = {
        User = "${toString d.user}:${toString d.group}";
        Entrypoint = [ d.binary ];
        Cmd = d.cmd;
        Env = lib.mapAttrsToList (key: value: "${key}=${toString value}") d.env;
        ExposedPorts = {
          "${toString d.port}/tcp" = { };
          "${toString d.admin_port}/tcp" = { };
        };
        Healthcheck = {
          Test = d.healthcheck.test;
          Interval = nanoseconds d.healthcheck.interval_seconds;
          Timeout = nanoseconds d.healthcheck.timeout_seconds;
          Retries = d.healthcheck.retries;
        };
        Labels = d.labels // {
          "org.opencontainers.image.title" = name;
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.version" = version;
        };
      };
    };

  layouts = lib.listToAttrs (map (service: lib.nameValuePair service.name (layoutOf service.name)) services);

  # streamLayeredImage puts `contents` into the last layer as symlinks (symlinkJoin) and their
  # closure into /nix/store layers. So: no `contents`; `extraCommands` copies real files into that
  # last layer's root, `fakeRootCommands` sets owners inside fakeroot before it is tarred, and
  # `includeStorePaths = false` leaves out every store layer (the layer is built from store paths,
  # so its references would otherwise be added as /nix/store layers).
  image =
    service:
    let
      layout = layouts.${service.name};
    in
    pkgs.dockerTools.streamLayeredImage {
      name = "quilla/${service.name}";
      tag = version;
      contents = [ ];
      includeStorePaths = false;
      extraCommands = ''
        ${lib.concatMapStrings (dir: ''
          install -d -m 0755 ./${dir}
        '') layout.directories}
        ${lib.concatMapStrings (file: ''
          install -m ${file.mode} ${file.source} .${file.path}
        '') layout.files}
      '';
      fakeRootCommands = ''
        chown -R 0:0 .
        chmod 0755 .
      '';
      # Reproducible: a fixed creation time.
      created = "1970-01-01T00:00:01Z";
      inherit (layout) config;
    };

  byName = lib.listToAttrs (map (service: lib.nameValuePair "image-${service.name}" (image service)) services);

  # `nix build .#images`: a directory with one image stream script per service.
  all = pkgs.linkFarm "quilla-images" (
    map (service: { name = service.name; path = byName."image-${service.name}"; }) services
  );

  # skopeo's signature policy for the push: the policy is checked against the image being read,
  # and what we read is only ever a docker-archive we just streamed from a Nix-built image. Every
  # other source is rejected. (docker-archive supports no narrower scope than "".)
  pushPolicy = pkgs.writeText "quilla-push-policy.json" (
    builtins.toJSON {
      default = [ { type = "reject"; } ];
      transports.docker-archive."" = [ { type = "insecureAcceptAnything"; } ];
    }
  );

  # `nix run .#push-images -- <registry>`: streams every image into the registry with skopeo.
  push = pkgs.writeShellApplication {
    name = "push-images";
    runtimeInputs = [ pkgs.skopeo pkgs.coreutils ];
    text = ''
      registry="''${1:?usage: push-images <registry, e.g. 123456789012.dkr.ecr.eu-south-2.amazonaws.com>}"
      work="$(mktemp -d)"
      trap 'rm -rf "$work"' EXIT
      ${lib.concatMapStrings (service: ''
        echo "pushing ${service.name}:${version}"
        ${byName."image-${service.name}"} > "$work/image.tar"
        skopeo --policy ${pushPolicy} copy \
          "docker-archive:$work/image.tar" "docker://$registry/quilla/${service.name}:${version}"
        rm -f "$work/image.tar"
      '') services}
    '';
  };
in
{
  inherit byName all push pushPolicy layouts;
}
