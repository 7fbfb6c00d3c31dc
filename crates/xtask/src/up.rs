//! `cargo xtask up`: the whole product on this machine, stopped cleanly with Ctrl-C.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::prereqs::{self, Needs};
use crate::services::{self, Output, Profile, StackOptions};

pub fn run() -> Result<()> {
    prereqs::ensure(Needs { python_tools: false, wrk: false, nix: false, gitops: false })?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut stack = services::start_stack(StackOptions {
            profile: Profile::Debug,
            output: Output::Prefixed,
            log: ("pretty", "info,sqlx=warn"),
            ready_within: Duration::from_secs(60),
        })
        .await?;
        println!("xtask: PostgreSQL on 127.0.0.1:{}, Redis on 127.0.0.1:{}", stack.postgres.port, stack.redis.port);
        print_banner(&stack.keys.issuer.token("u1", "customer", Duration::from_secs(3600)));
        let outcome = wait_for_stop(&mut stack.running).await;
        println!("\nxtask: stopping services, PostgreSQL and Redis");
        stack.stop();
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
    println!("\nxtask: everything is up. Ctrl-C stops it all.\n");
    for service in services::SERVICES.iter() {
        println!("  {:<21} http://localhost:{}   (/health /ready /metrics /openapi.json)", service.name, service.port);
    }
    let port = |name: &str| services::SERVICES.iter().find(|s| s.name == name).map_or(0, |s| s.port);
    let (api, notifier) = (port("transaction-api"), port("notification-service"));
    println!(
        r#"
Every API call needs a bearer token from the local issuer. A customer token for user u1, valid
for an hour (another: TOKEN=$(cargo xtask token --sub u2 | tail -n1); --role service acts for
any user):

  TOKEN={token}

Try:
  curl -sS -X POST localhost:{api}/transactions -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -H "idempotency-key: $(date +%s%N)" \
       -d '{{"user_id":"u1","amount":"100.50","currency":"BRL"}}'
  curl -sS localhost:{api}/transactions/<id from the answer above> -H "authorization: Bearer $TOKEN"
  curl -sS localhost:{notifier}/notifications/u1 -H "authorization: Bearer $TOKEN"
  curl -sS -X POST localhost:{notifier}/notify -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"user_id":"u1","message":"hello"}}'
"#
    );
}
