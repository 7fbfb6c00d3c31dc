# Every deployable, one line each: adding a service here gives it a package, an image, a size
# check and a place in .#images. `port` is the local port (xtask up); pods all listen on 8080.
[
  { name = "transaction-api"; port = 8080; }
  { name = "notification-service"; port = 8081; }
]
