//! `cargo xtask up`: the whole product on this machine, stopped cleanly with Ctrl-C.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::infra::{Daemon, Durability, Postgres};
use crate::prereqs::{self, Needs};
use crate::services::{self, Output, Profile, SERVICES};

pub fn run() -> Result<()> {
    prereqs::ensure(Needs { python_tools: false, wrk: false, nix: false, gitops: false })?;
    services::check_ports_free()?;
    let bin_dir = services::build(Profile::Debug)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let postgres = Postgres::start(Durability::Production)?;
        let redis = Daemon::redis()?;
        services::create_database(&postgres)?;
        println!("xtask: PostgreSQL on 127.0.0.1:{}, Redis on 127.0.0.1:{}", postgres.port, redis.port);
        // A throwaway token issuer: its JWKS is what the services trust, its key signs `xtask token`.
        let keys = services::LocalKeys::create()?;
        let http = reqwest::Client::new();
        let mut running = Vec::new();
        // notification-service first, so transaction-api's first deliveries find it.
        for service in SERVICES.iter().rev() {
            let mut started = services::start(
                &bin_dir,
                service,
                &postgres,
                &redis,
                &keys,
                Output::Prefixed,
                ("pretty", "info,sqlx=warn"),
            )?;
            services::wait_ready(&http, &mut started, Duration::from_secs(60)).await?;
            running.push(started);
        }
        print_banner(&keys.issuer.token("u1", "customer", Duration::from_secs(3600)));
        let outcome = wait_for_stop(&mut running).await;
        println!("\nxtask: stopping services, PostgreSQL and Redis");
        // transaction-api first: its dispatcher stops before its webhook target does.
        for service in running.iter_mut().rev() {
            service.stop();
        }
        drop(running);
        drop(redis);
        drop(postgres);
        println!("xtask: stopped; temporary data removed");
        outcome
    })
}

/// Returns on Ctrl-C or SIGTERM; fails if a service exits by itself.
async fn wait_for_stop(running: &mut [services::RunningService]) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for service in running.iter_mut() {
                    if let Ok(Some(status)) = service.child.try_wait() {
                        bail!("{} exited unexpectedly ({status})", service.name);
                    }
                }
            }
        }
    }
}

fn print_banner(token: &str) {
    println!(
        r#"
xtask: everything is up. Ctrl-C stops it all.

  transaction-api       http://localhost:8080   (/health /ready /metrics /openapi.json)
  notification-service  http://localhost:8081   (/health /ready /metrics /openapi.json)

Every API call needs a bearer token from the local issuer. A customer token for user u1, valid
for an hour (another: TOKEN=$(cargo xtask token --sub u2 | tail -n1); --role service acts for
any user):

  TOKEN={token}

Try:
  curl -sS -X POST localhost:8080/transactions -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -H "idempotency-key: $(date +%s%N)" \
       -d '{{"user_id":"u1","amount":"100.50","currency":"BRL"}}'
  curl -sS localhost:8080/transactions/<id from the answer above> -H "authorization: Bearer $TOKEN"
  curl -sS localhost:8081/notifications/u1 -H "authorization: Bearer $TOKEN"
  curl -sS -X POST localhost:8081/notify -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"user_id":"u1","message":"hello"}}'
"#
    );
}
