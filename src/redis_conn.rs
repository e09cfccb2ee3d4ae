//! One connection type over a single Redis or a Redis Cluster, for the store and the webhook outbox.
//!
//! `LINKHIT_REDIS_URL` is either one URL (`redis://host:port/db`) or, for a cluster, a comma-separated
//! list of seed nodes (`redis://h1:p1,redis://h2:p2`, or the shorthand `redis+cluster://h1:p1,h2:p2`).
//! A single node gets a self-reconnecting `ConnectionManager`; a cluster gets redis-rs's cluster
//! connection, which follows the slot map through failovers and resharding and reconnects by itself.
//! Both are created lazily, so linkhit starts while Redis is down.
//!
//! The one thing callers must know: a pipeline sent to a cluster must stay in one slot.
//! [`Pool::spread`] handles that for pipelines whose commands carry their key's hash tag.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

/// Why `LINKHIT_REDIS_URL` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("LINKHIT_REDIS_URL is empty")]
    Empty,
    #[error("`{node}` is not a Redis URL: {problem}")]
    NotRedis { node: String, problem: String },
}

/// Parses `LINKHIT_REDIS_URL`.
pub fn parse_target(raw: &str) -> Result<Target, TargetError> {
    let raw = raw.trim();
    let (cluster, list) = match raw.strip_prefix("redis+cluster://") {
        Some(rest) => (true, rest.split(',').map(|n| format!("redis://{}", n.trim())).collect::<Vec<_>>()),
        None => (raw.contains(','), raw.split(',').map(|n| n.trim().to_owned()).collect()),
    };
    for node in &list {
        redis::Client::open(node.as_str())
            .map_err(|e| TargetError::NotRedis { node: node.clone(), problem: e.to_string() })?;
    }
    match (cluster, list.len()) {
        (_, 0) => Err(TargetError::Empty),
        (false, 1) => Ok(Target::Single(list.into_iter().next().expect("one"))),
        _ => Ok(Target::Cluster(list)),
    }
}

/// A cheap-to-clone connection to either kind of deployment.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Hands out connections; the cluster connection is established on first use.
pub struct Pool {
    target: Target,
    single: Option<ConnectionManager>,
    cluster_client: Option<redis::cluster::ClusterClient>,
    cluster: OnceCell<ClusterConnection>,
    /// The runtime `open` ran on: the cluster connection's driver tasks are spawned there whichever
    /// runtime asks first (the click pipeline runs its own), so they live as long as the server.
    home: tokio::runtime::Handle,
}

impl Pool {
    /// Prepares connections without connecting. Must be called inside a Tokio runtime.
    pub fn open(url: &str, connect_timeout: Duration) -> Result<Self, TargetError> {
        let target = parse_target(url)?;
        let not_redis =
            |node: &str, e: redis::RedisError| TargetError::NotRedis { node: node.to_owned(), problem: e.to_string() };
        let (single, cluster_client) = match &target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| not_redis(url, e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    // Deadlines are applied per operation by the callers.
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| not_redis(url, e))?;
                (Some(manager), None)
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(connect_timeout)
                    .response_timeout(Duration::from_secs(60))
                    .retries(2)
                    .build()
                    .map_err(|e| not_redis(&nodes.join(","), e))?;
                (None, Some(client))
            }
        };
        Ok(Self { target, single, cluster_client, cluster: OnceCell::new(), home: tokio::runtime::Handle::current() })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// A connection (connecting to the cluster on first use).
    pub async fn get(&self) -> RedisResult<Conn> {
        if let Some(single) = &self.single {
            return Ok(Conn::Single(single.clone()));
        }
        let client = self.cluster_client.as_ref().expect("a cluster pool has a cluster client");
        let conn = self
            .cluster
            .get_or_try_init(|| async {
                let client = client.clone();
                match self.home.spawn(async move { client.get_async_connection().await }).await {
                    Ok(connected) => connected,
                    Err(err) => Err(redis::RedisError::from(std::io::Error::other(err.to_string()))),
                }
            })
            .await?;
        Ok(Conn::Cluster(conn.clone()))
    }

    /// Plain clients for pub/sub: the node itself, or every seed of a cluster (a cluster broadcasts
    /// `PUBLISH` to all nodes, so subscribing on any one of them sees every message).
    pub fn pubsub_clients(&self) -> Vec<redis::Client> {
        let urls = match &self.target {
            Target::Single(url) => vec![url.clone()],
            Target::Cluster(nodes) => nodes.clone(),
        };
        urls.iter().filter_map(|u| redis::Client::open(u.as_str()).ok()).collect()
    }

    /// Runs `cmds`, each tagged with its key's hash tag, and returns their replies in order: as one
    /// pipeline on a single node, as one pipeline per hash tag (run concurrently) on a cluster.
    /// `prelude` commands (e.g. `UNLINK`s) head the single-node pipeline; their replies are dropped.
    pub async fn spread(&self, tagged: Vec<(String, Cmd)>, prelude: &[Cmd]) -> RedisResult<Vec<Value>> {
        self.spread_script(tagged, prelude, None).await
    }

    /// [`Self::spread`] of commands that run `script` by its SHA (`EVALSHA`): when a node answers
    /// `NOSCRIPT` (new, restarted, failed over, `SCRIPT FLUSH`), the script is loaded on every node and
    /// the same pipelines are sent once more. Safe only for commands that are idempotent when re-sent
    /// (the counting script's guards): a pipeline may have partly run before the error.
    pub async fn spread_script(
        &self,
        tagged: Vec<(String, Cmd)>,
        prelude: &[Cmd],
        script: Option<&str>,
    ) -> RedisResult<Vec<Value>> {
        let mut conn = self.get().await?;
        let reload = |err: &redis::RedisError| script.filter(|_| has_error_code(err, "NOSCRIPT"));
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for cmd in prelude {
                pipe.add_command(cmd.clone()).ignore();
            }
            for (_, cmd) in tagged {
                pipe.add_command(cmd);
            }
            return match pipe.query_async(&mut conn).await {
                Err(err) if reload(&err).is_some() => {
                    load_script(&mut conn, script.unwrap_or_default()).await?;
                    pipe.query_async(&mut conn).await
                }
                other => other,
            };
        }
        let mut groups: Vec<(Vec<usize>, redis::Pipeline)> = Vec::new();
        let mut by_tag: HashMap<&str, usize> = HashMap::new();
        for (i, (tag, cmd)) in tagged.iter().enumerate() {
            let g = *by_tag.entry(tag.as_str()).or_insert_with(|| {
                groups.push((Vec::new(), redis::pipe()));
                groups.len() - 1
            });
            groups[g].0.push(i);
            groups[g].1.add_command(cmd.clone());
        }
        let run = || {
            futures_util::future::try_join_all(groups.iter().map(|(_, pipe)| {
                let mut conn = conn.clone();
                async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
            }))
        };
        let replies = match run().await {
            Err(err) if reload(&err).is_some() => {
                // On a cluster connection `SCRIPT LOAD` goes to every master.
                load_script(&mut conn.clone(), script.unwrap_or_default()).await?;
                run().await?
            }
            other => other?,
        };
        let mut out = vec![Value::Nil; tagged.len()];
        for ((indices, _), values) in groups.iter().zip(replies) {
            for (&i, v) in indices.iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Loads a script (`SCRIPT LOAD`) after a node answered `NOSCRIPT`.
async fn load_script(conn: &mut Conn, script: &str) -> RedisResult<()> {
    let _: Value = redis::cmd("SCRIPT").arg("LOAD").arg(script).query_async(conn).await?;
    metrics::counter!("linkhit_redis_script_loads_total").increment(1);
    Ok(())
}

/// Whether Redis answered with the error `code` (`NOGROUP`, `BUSYGROUP`, …), for a single command or
/// for any command of a pipeline. Matches the code the client parsed, never the message text.
pub fn has_error_code(err: &redis::RedisError, code: &str) -> bool {
    err.code() == Some(code)
        || err.clone().into_server_errors().is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == code))
}

/// The hash tag of a key (`lh:link:{abc}` → `abc`), or the whole key.
pub fn hash_tag(key: &str) -> &str {
    match (key.find('{'), key.find('}')) {
        (Some(open), Some(close)) if close > open + 1 => &key[open + 1..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("redis://127.0.0.1:6379/0"), Ok(Target::Single("redis://127.0.0.1:6379/0".into())));
        assert_eq!(
            parse_target("redis://a:1, redis://b:2"),
            Ok(Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            parse_target("redis+cluster://a:1,b:2"),
            Ok(Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(parse_target("redis+cluster://a:1"), Ok(Target::Cluster(vec!["redis://a:1".into()])));
        assert!(parse_target("http://nope").is_err());
    }

    #[test]
    fn error_codes_are_matched_by_code() {
        let nogroup = redis::make_extension_error("NOGROUP".into(), Some("No such key or consumer group".into()));
        assert!(has_error_code(&nogroup, "NOGROUP"));
        assert!(!has_error_code(&nogroup, "BUSYGROUP"));
        let other = redis::make_extension_error("ERR".into(), Some("mentions NOGROUP in its text".into()));
        assert!(!has_error_code(&other, "NOGROUP"), "the message text is not the code");
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag("lh:link:{abc}"), "abc");
        assert_eq!(hash_tag("lh:bc:{ws_1:fall}"), "ws_1:fall");
        assert_eq!(hash_tag("lh:key:0123"), "lh:key:0123");
        assert_eq!(hash_tag("a{}b"), "a{}b");
    }
}
