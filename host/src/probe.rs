//! Bare instances of a runtime's component, made by the same factory, with the same limits
//! and sandbox as a store's but without a store's call handling around them: what it costs
//! to instantiate the component, and what an idle instance holds (`taskstore bench`).

use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::bindings::exports::taskstore::storage::task_storage as wit;
use crate::engine::to_anyhow;
use crate::error::TaskError;
use crate::instance::InstanceState;
use crate::network::NetworkPolicy;
use crate::options::RedisAddress;
use crate::output::GuestOutput;
use crate::runtime::Runtime;

/// Guest code of a probe's instance is cut off after this long, as a store's would be.
const DEADLINE: Duration = Duration::from_secs(60);

/// Makes instances of `runtime`'s component for a store on one Redis URL; see the module
/// docs.
pub struct InstanceProbe {
    runtime: Runtime,
    network: NetworkPolicy,
    url: String,
}

/// How long one instantiation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstantiationTime {
    /// Instantiating the linked component into a store that is ready for it.
    pub instantiate: Duration,
    /// That, plus making the store: its limits and sandboxed WASI context.
    pub with_store: Duration,
}

/// An instance with an open guest store (and its Redis connection), as an idle
/// [`AsyncTaskStore`](crate::AsyncTaskStore) keeps it; closed when dropped.
pub struct IdleInstance {
    store: Store<InstanceState>,
}

impl InstanceProbe {
    /// Instances that may reach the Redis `url` names (resolved now, as a store resolves it
    /// when it opens).
    ///
    /// # Errors
    /// The URL does not parse, or its host name does not resolve.
    pub async fn new(runtime: &Runtime, url: &str) -> Result<InstanceProbe, TaskError> {
        let network = NetworkPolicy::resolve(&RedisAddress::from_url(url)?).await?;
        Ok(InstanceProbe {
            runtime: runtime.clone(),
            network,
            url: url.to_owned(),
        })
    }

    fn new_store(&self) -> Store<InstanceState> {
        self.runtime
            .new_store(&self.network, &GuestOutput::new(1024), DEADLINE)
    }

    /// Makes a store and instantiates the component in it, timing both.
    ///
    /// # Errors
    /// Instantiation fails (the memory limit is too small for the component, say).
    pub async fn instantiate(&self) -> anyhow::Result<InstantiationTime> {
        let started = Instant::now();
        let mut store = self.new_store();
        let before = Instant::now();
        self.runtime
            .pre()
            .instantiate_async(&mut store)
            .await
            .map_err(to_anyhow)?;
        Ok(InstantiationTime {
            instantiate: before.elapsed(),
            with_store: started.elapsed(),
        })
    }

    /// A new instance with its guest store opened on the URL, every option at its default.
    ///
    /// # Errors
    /// Instantiation fails, or the guest store does not open (Redis unreachable, say).
    pub async fn open_idle(&self) -> anyhow::Result<IdleInstance> {
        let mut store = self.new_store();
        let guest = self
            .runtime
            .pre()
            .instantiate_async(&mut store)
            .await
            .map_err(to_anyhow)?;
        let options = wit::Options {
            url: self.url.clone(),
            key_prefix: None,
            default_ttl_seconds: None,
            timeout_ms: None,
            max_document_bytes: None,
            tls_ca_certificates: None,
            danger_accept_invalid_certificates: None,
            listing: None,
        };
        let handle = guest
            .taskstore_storage_task_storage()
            .store()
            .call_open(&mut store, &options)
            .await
            .map_err(to_anyhow)?
            .map_err(|e| anyhow::anyhow!("open failed: {}", crate::error::from_guest(e)))?;
        // The handle stays open (its connection too) until the store is dropped.
        let _ = handle;
        Ok(IdleInstance { store })
    }
}

impl IdleInstance {
    /// Linear memory the instance has grown to, in bytes.
    pub fn linear_memory_bytes(&self) -> usize {
        self.store.data().memory_grown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskstore_testing::redis_server::RedisServer;

    #[tokio::test(flavor = "current_thread")]
    async fn instances_instantiate_and_an_idle_one_holds_its_memory() {
        let server = RedisServer::start().unwrap();
        let runtime = Runtime::builder().build().unwrap();
        let probe = InstanceProbe::new(&runtime, &server.url()).await.unwrap();
        let time = probe.instantiate().await.unwrap();
        assert!(time.instantiate <= time.with_store, "{time:?}");
        let idle = probe.open_idle().await.unwrap();
        // Not a timing: an instance holds at least the guest's one 64 KiB page.
        assert!(idle.linear_memory_bytes() >= 64 * 1024);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_that_does_not_open_is_an_error() {
        let runtime = Runtime::builder().build().unwrap();
        let refusing = taskstore_testing::redis_server::RefusingPort::bind().unwrap();
        let url = format!("redis://127.0.0.1:{}", refusing.port());
        let probe = InstanceProbe::new(&runtime, &url).await.unwrap();
        let error = probe
            .open_idle()
            .await
            .err()
            .expect("nothing listens there");
        assert!(error.to_string().starts_with("open failed: "), "{error}");
        assert!(InstanceProbe::new(&runtime, "not a url").await.is_err());
    }
}
