//! `--baseline redis://…`: the same flash-sale workload against Redis with the
//! reserve / commit / release / expire Lua scripts teams commonly run, over the
//! `redis` crate's tokio connection, RESP2 (one request at a time per connection,
//! like the HTTP side: a pool of connections, each used by one session at a time).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Value, cmd};

use crate::audit::{Audit, SkuAudit};
use crate::flash::{Action, FlashConfig, run_tag};
use crate::http::BaseUrl;
use crate::load::{self, LoadConfig};
use crate::rng::{Rng, Zipf};
use crate::stats::{Recorder, RunStats};

/// Hold `qty` of a SKU if available. KEYS: sku hash, holds zset, hold hash.
/// ARGV: qty, expires_at_ms, hold id, sku key. Returns 1 held, 0 insufficient.
const RESERVE: &str = r#"
local on_hand = tonumber(redis.call('HGET', KEYS[1], 'on_hand') or '-1')
if on_hand < 0 then return redis.error_reply('unknown_sku') end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local qty = tonumber(ARGV[1])
if on_hand - reserved < qty then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HSET', KEYS[3], 'sku', ARGV[4], 'qty', qty, 'status', 'held')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

/// End a hold. KEYS: hold hash, holds zset. ARGV: hold id, now_ms, `commit` or
/// `release`. Returns 1 done, 0 not held (already ended), -1 expired.
const END_HOLD: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'held' then return 0 end
local sku = redis.call('HGET', KEYS[1], 'sku')
local qty = tonumber(redis.call('HGET', KEYS[1], 'qty'))
local due = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', sku, 'reserved', -qty)
if due <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'expired')
  return -1
end
if ARGV[3] == 'commit' then
  redis.call('HINCRBY', sku, 'on_hand', -qty)
  redis.call('HINCRBY', sku, 'sold', qty)
  redis.call('HSET', KEYS[1], 'status', 'committed')
else
  redis.call('HSET', KEYS[1], 'status', 'released')
end
return 1
"#;

/// Expire overdue holds. KEYS: holds zset. ARGV: now_ms, hold key prefix, limit.
const EXPIRE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'status') == 'held' then
    local sku = redis.call('HGET', key, 'sku')
    redis.call('HINCRBY', sku, 'reserved', -tonumber(redis.call('HGET', key, 'qty')))
    redis.call('HSET', key, 'status', 'expired')
  end
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"#;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long one request may take before it counts as unanswered (and its connection
/// is dropped), and one connect.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A small pool: take a connection, use it, give it back (dropped when the request
/// got no answer; kept when Redis answered with an error).
///
/// A `MultiplexedConnection` could carry every session's requests over one socket;
/// the drill keeps one request at a time per connection, as the HTTP side does.
struct Pool {
    client: Client,
    config: AsyncConnectionConfig,
    base: String,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Pool {
    fn new(url: &BaseUrl) -> anyhow::Result<Pool> {
        // TCP_NODELAY as the HTTP side has it (the crate leaves Nagle on by default).
        let info = (url.host.clone(), url.port)
            .into_connection_info()
            .with_context(|| format!("redis address {}", url.base))?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = Client::open(info).with_context(|| format!("redis address {}", url.base))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REQUEST_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT));
        Ok(Pool {
            client,
            config,
            base: url.base.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .with_context(|| format!("connecting to {}", self.base))
    }

    /// One command's answer: an error reply is `Value::ServerError`, `Err` is no
    /// answer (connect, I/O or timeout).
    async fn call(&self, command: &Cmd) -> anyhow::Result<Value> {
        let conn = self.idle.lock().expect("pool").pop();
        let mut conn = match conn {
            Some(c) => c,
            None => self.connect().await?,
        };
        let reply = conn.req_packed_command(command).await?;
        self.idle.lock().expect("pool").push(conn);
        Ok(reply)
    }
}

struct Scripts {
    reserve: String,
    end_hold: String,
    expire: String,
}

async fn load_script(pool: &Pool, body: &str) -> anyhow::Result<String> {
    match pool.call(cmd("SCRIPT").arg("LOAD").arg(body)).await? {
        Value::BulkString(sha) => Ok(String::from_utf8(sha)?),
        other => bail!("SCRIPT LOAD: {other:?}"),
    }
}

struct Ack {
    hold: String,
    sku: usize,
    qty: u64,
    /// The status the hold must have at audit time.
    expect: &'static [&'static str],
}

struct Ctx {
    pool: Pool,
    scripts: Scripts,
    recorder: Arc<Recorder>,
    acks: Mutex<Vec<Ack>>,
    unanswered: std::sync::atomic::AtomicU64,
    cfg: FlashConfig,
    zipf: Zipf,
    prefix: String,
}

impl Ctx {
    fn sku_key(&self, k: usize) -> String {
        format!("{}sku:{k}", self.prefix)
    }
    fn holds_key(&self) -> String {
        format!("{}holds", self.prefix)
    }
    fn hold_key(&self, id: &str) -> String {
        format!("{}hold:{id}", self.prefix)
    }
}

/// The problem code of a script's answer; `refused` names what its 0 means
/// (`insufficient_stock` for a reservation, so it counts as sold out as surge's does).
fn code_of(r: &anyhow::Result<Value>, refused: &str) -> Option<String> {
    match r {
        Ok(Value::Int(1)) => None,
        Ok(Value::Int(0)) => Some(refused.into()),
        Ok(Value::Int(-1)) => Some("expired".into()),
        Ok(Value::ServerError(e)) => Some(format!("redis_error: {}", e.code())),
        Ok(other) => Some(format!("unexpected: {other:?}")),
        Err(_) => Some("transport_error".into()),
    }
}

async fn shopper(ctx: Arc<Ctx>, n: u64, due: Instant) {
    let mut rng = Rng::for_item(ctx.cfg.seed, n);
    let k = ctx.zipf.sample(&mut rng);
    let qty = rng.range(1, ctx.cfg.qty_max.max(1));
    let action = ctx.cfg.mix.pick(&mut rng);
    let _customer = rng.below(ctx.cfg.shoppers.max(1));
    let hold = format!("h{n}");
    let (sku_key, holds_key, hold_key) = (ctx.sku_key(k), ctx.holds_key(), ctx.hold_key(&hold));
    let exp = now_ms() + ctx.cfg.ttl_ms;
    let r = ctx
        .pool
        .call(
            cmd("EVALSHA")
                .arg(&ctx.scripts.reserve)
                .arg(3)
                .arg(&sku_key)
                .arg(&holds_key)
                .arg(&hold_key)
                .arg(qty)
                .arg(exp)
                .arg(&hold)
                .arg(&sku_key),
        )
        .await;
    let code = code_of(&r, "insufficient_stock");
    ctx.recorder.record("reserve", due, code.as_deref());
    if r.is_err() {
        ctx.unanswered.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if code.is_some() {
        return;
    }
    let expect: &'static [&'static str] = match action {
        Action::Abandon => &["expired"],
        Action::Pay | Action::Cancel => {
            // The order row lives elsewhere in such setups; the stock side is one
            // script call, like surge's pay.
            let (op, verb) = if action == Action::Pay {
                ("pay", "commit")
            } else {
                ("cancel", "release")
            };
            let t = Instant::now();
            let r = ctx
                .pool
                .call(
                    cmd("EVALSHA")
                        .arg(&ctx.scripts.end_hold)
                        .arg(2)
                        .arg(&hold_key)
                        .arg(&holds_key)
                        .arg(&hold)
                        .arg(now_ms())
                        .arg(verb),
                )
                .await;
            let code = code_of(&r, "not_held");
            ctx.recorder.record(op, t, code.as_deref());
            match (&r, code) {
                (Ok(_), None) if action == Action::Pay => &["committed"],
                (Ok(_), None) => &["released"],
                (Ok(Value::Int(-1)), _) => &["expired"],
                _ if action == Action::Pay => &["held", "expired", "committed"],
                _ => &["held", "expired", "released"],
            }
        }
    };
    ctx.acks.lock().expect("acks").push(Ack {
        hold,
        sku: k,
        qty,
        expect,
    });
}

async fn hget_u64(pool: &Pool, key: &str, field: &str) -> anyhow::Result<u64> {
    match pool.call(cmd("HGET").arg(key).arg(field)).await? {
        Value::BulkString(v) => Ok(String::from_utf8(v)?.parse::<i64>()?.max(0) as u64),
        Value::Nil => Ok(0),
        other => bail!("HGET {key} {field}: {other:?}"),
    }
}

/// Whether a baseline Redis answers (`PING`), asked before the surge run so that a
/// wrong address costs seconds, not the surge run (it was found after it, and the
/// surge results were thrown away with the error).
pub async fn check_reachable(url: &BaseUrl) -> anyhow::Result<()> {
    let pool = Pool::new(url)?;
    match pool.call(&cmd("PING")).await? {
        Value::ServerError(e) => bail!("{}: PING answered {e:?}", url.base),
        _ => Ok(()),
    }
}

/// Run the flash sale against Redis and audit it the same way (stock levels and
/// every acknowledged hold).
pub async fn run(
    url: BaseUrl,
    cfg: FlashConfig,
    load_cfg: &LoadConfig,
    label: &str,
) -> anyhow::Result<(RunStats, Audit)> {
    let pool = Pool::new(&url)?;
    let scripts = Scripts {
        reserve: load_script(&pool, RESERVE).await?,
        end_hold: load_script(&pool, END_HOLD).await?,
        expire: load_script(&pool, EXPIRE).await?,
    };
    let prefix = format!("surge-loadtest:{}:", run_tag(cfg.seed));
    let ctx = Arc::new(Ctx {
        pool,
        scripts,
        recorder: Arc::new(Recorder::new(load_cfg.mode())),
        acks: Mutex::new(Vec::new()),
        unanswered: Default::default(),
        zipf: Zipf::new(cfg.skus, cfg.zipf_s),
        cfg: cfg.clone(),
        prefix,
    });
    for k in 0..cfg.skus {
        let key = ctx.sku_key(k);
        let r = ctx
            .pool
            .call(
                cmd("HSET")
                    .arg(&key)
                    .arg("on_hand")
                    .arg(cfg.stock)
                    .arg("reserved")
                    .arg(0)
                    .arg("sold")
                    .arg(0),
            )
            .await?;
        if let Value::ServerError(e) = r {
            bail!("HSET {key}: {e}");
        }
    }
    // The sweeper every such setup needs: expire overdue holds every 50 ms.
    let sweeping = Arc::new(AtomicBool::new(true));
    let sweeper = {
        let ctx = Arc::clone(&ctx);
        let sweeping = Arc::clone(&sweeping);
        tokio::spawn(async move {
            let hold_prefix = format!("{}hold:", ctx.prefix);
            let holds = ctx.holds_key();
            while sweeping.load(Ordering::Relaxed) {
                let _ = ctx
                    .pool
                    .call(
                        cmd("EVALSHA")
                            .arg(&ctx.scripts.expire)
                            .arg(1)
                            .arg(&holds)
                            .arg(now_ms())
                            .arg(&hold_prefix)
                            .arg(1000),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let c = Arc::clone(&ctx);
    let outcome =
        load::run_with_progress(label, load_cfg, Arc::clone(&ctx.recorder), move |n, due| {
            shopper(Arc::clone(&c), n, due)
        })
        .await;
    let stats = ctx.recorder.summary(label, outcome.elapsed);
    tokio::time::sleep(Duration::from_millis(cfg.ttl_ms + 1_500)).await;
    sweeping.store(false, Ordering::Relaxed);
    let _ = sweeper.await;

    // Audit: every acknowledged hold where it should be; levels add up.
    let mut audit = Audit::new();
    let acks = std::mem::take(&mut *ctx.acks.lock().expect("acks"));
    let mut sold_known: BTreeMap<usize, u64> = BTreeMap::new();
    for a in &acks {
        let key = ctx.hold_key(&a.hold);
        let status = match ctx.pool.call(cmd("HGET").arg(&key).arg("status")).await {
            Ok(Value::BulkString(v)) => String::from_utf8_lossy(&v).into_owned(),
            Ok(Value::Nil) => {
                audit.lost_write(format!("hold {} was acknowledged but is missing", a.hold));
                continue;
            }
            other => {
                audit.fail(format!("hold {}: {other:?}", a.hold));
                continue;
            }
        };
        audit.check(a.expect.contains(&status.as_str()), || {
            format!(
                "hold {} is {status}, expected {}",
                a.hold,
                a.expect.join(" or ")
            )
        });
        if status == "committed" {
            *sold_known.entry(a.sku).or_default() += a.qty;
        }
    }
    let unanswered = ctx.unanswered.load(Ordering::Relaxed);
    for k in 0..cfg.skus {
        let key = ctx.sku_key(k);
        let on_hand = hget_u64(&ctx.pool, &key, "on_hand").await?;
        let reserved = hget_u64(&ctx.pool, &key, "reserved").await?;
        let sold = hget_u64(&ctx.pool, &key, "sold").await?;
        let received = cfg.stock;
        let known = sold_known.get(&k).copied().unwrap_or(0);
        audit.check(reserved <= on_hand, || {
            format!("{key}: reserved {reserved} > on_hand {on_hand} (oversold)")
        });
        audit.check(
            sold + reserved <= received && on_hand + sold == received,
            || {
                format!(
                    "{key}: sold {sold} + held {reserved} vs received {received}, on_hand {on_hand}"
                )
            },
        );
        audit.check(sold == known || unanswered > 0, || {
            format!("{key}: sold {sold} but the drill's committed holds account for {known}")
        });
        audit.skus.push(SkuAudit {
            sku: key,
            received,
            on_hand,
            reserved,
            sold,
            sold_by_known_orders: known,
            held_by_known: 0,
        });
    }
    audit
        .notes
        .push(format!("{} holds acknowledged and checked", acks.len()));
    audit.notes.extend(outcome.notes());
    Ok((stats, audit))
}
