# Distroless images with dockerTools.streamLayeredImage: the static binary, CA certificates and
# passwd/group for user 65532 — no shell, no package manager. Same layout, user, entrypoint, env,
# labels and health check as `cargo xtask images`.
{ pkgs, lib, services, binaries, version, revision }:
let
  # The image's whole filesystem, laid out exactly as `cargo xtask images` lays it out: the binary
  # in /usr/local/bin, the CA bundle, and passwd/group naming the non-root user 65532.
  rootfs =
    service:
    pkgs.runCommand "quilla-${service.name}-rootfs" { } ''
      install -Dm755 ${binaries.${service.name}}/bin/${service.name} $out/usr/local/bin/${service.name}
      install -Dm644 ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
      printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > $out/etc/passwd
      printf 'root:x:0:\nnonroot:x:65532:\n' > $out/etc/group
    '';

  image =
    service:
    let
      entrypoint = "/usr/local/bin/${service.name}";
    in
    pkgs.dockerTools.streamLayeredImage {
      name = "quilla/${service.name}";
      tag = version;
      contents = [ (rootfs service) ];
      # Reproducible: no timestamp.
      created = "1970-01-01T00:00:01Z";
      config = {
        User = "65532:65532";
        Entrypoint = [ entrypoint ];
        Cmd = [ "serve" ];
        Env = [
          "PATH=/usr/local/bin"
          "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
          "QUILLA_SERVER__PORT=8080"
        ];
        ExposedPorts."8080/tcp" = { };
        Healthcheck = {
          Test = [ "CMD" entrypoint "healthcheck" ];
          Interval = 10000000000;
          Timeout = 3000000000;
          Retries = 3;
        };
        Labels = {
          "org.opencontainers.image.title" = service.name;
          "org.opencontainers.image.source" = "https://github.com/quilla/quilla";
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.licenses" = "Apache-2.0";
        };
      };
    };

  byName = lib.listToAttrs (map (service: lib.nameValuePair "image-${service.name}" (image service)) services);

  # `nix build .#images`: a directory with one image stream script per service.
  all = pkgs.linkFarm "quilla-images" (
    map (service: { name = service.name; path = byName."image-${service.name}"; }) services
  );

  # `nix run .#push-images -- <registry>`: streams every image into the registry with skopeo.
  push = pkgs.writeShellApplication {
    name = "push-images";
    runtimeInputs = [ pkgs.skopeo pkgs.gzip ];
    text = ''
      registry="''${1:?usage: push-images <registry, e.g. 123456789012.dkr.ecr.eu-south-2.amazonaws.com>}"
      ${lib.concatMapStrings (service: ''
        echo "pushing ${service.name}:${version}"
        ${byName."image-${service.name}"} | gzip --fast > image.tar.gz
        skopeo copy "docker-archive:image.tar.gz" "docker://$registry/quilla/${service.name}:${version}"
        rm -f image.tar.gz
      '') services}
    '';
  };
in
{
  inherit byName all push;
}
