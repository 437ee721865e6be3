//! The component's WASI context: the little it may reach outside its own memory.

use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::network::NetworkPolicy;
use crate::output::GuestOutput;

/// The WASI context of one instance: deny by default, grant only what the WIT world says
/// the component needs. TCP (and name lookup) as `policy` allows; no environment, no
/// arguments, no working directory, no preopened directories, an empty stdin; stdout and
/// stderr go to `output`. Clocks and random numbers are WASI's defaults.
pub(crate) fn wasi_context(policy: NetworkPolicy, output: &GuestOutput) -> WasiCtx {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(tokio::io::empty())
        .stdout(output.clone())
        .stderr(output.clone());
    policy.apply(&mut wasi);
    wasi.build()
}

/// These tests call wasmtime-wasi's own implementations of the WASI imports on the context
/// [`wasi_context`] builds, exactly as the component's imports would reach them.
#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::{Duration, Instant};

    use wasmtime::component::{Resource, ResourceTable};
    use wasmtime_wasi::cli::WasiCliView;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::cli::{environment, stdin};
    use wasmtime_wasi::p2::bindings::filesystem::preopens;
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
    use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
    use wasmtime_wasi::p2::bindings::sockets::{
        instance_network, tcp_create_socket, udp_create_socket,
    };
    use wasmtime_wasi::p2::{SocketError, StreamError};
    use wasmtime_wasi::sockets::WasiSocketsView;
    use wasmtime_wasi::{WasiCtxView, WasiView};

    use super::*;
    use crate::options::Endpoint;

    struct Sandboxed {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Sandboxed {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    async fn sandbox_for(url: &str) -> Sandboxed {
        let endpoint = Endpoint::from_url(url).unwrap();
        let policy = NetworkPolicy::resolve(&endpoint).await.unwrap();
        Sandboxed {
            wasi: wasi_context(policy, &GuestOutput::new(1024)),
            table: ResourceTable::new(),
        }
    }

    fn code(error: SocketError) -> ErrorCode {
        error.downcast().expect("a WASI error code, not a trap")
    }

    /// Connects through the sandbox's WASI sockets the way the component does: create,
    /// start-connect, then finish-connect until it stops saying would-block.
    async fn wasi_connect(sandbox: &mut Sandboxed, to: SocketAddr) -> Result<(), ErrorCode> {
        let mut sockets = sandbox.sockets();
        let network = instance_network::Host::instance_network(&mut sockets).unwrap();
        let socket =
            tcp_create_socket::Host::create_tcp_socket(&mut sockets, IpAddressFamily::Ipv4)
                .map_err(code)?;
        sockets
            .start_connect(Resource::new_borrow(socket.rep()), network, to.into())
            .map_err(code)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match sockets
                .finish_connect(Resource::new_borrow(socket.rep()))
                .map_err(code)
            {
                Err(ErrorCode::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(error) => return Err(error),
                Ok(_streams) => return Ok(()),
            }
        }
    }

    /// Whether anything connected to `listener` (without waiting for it).
    fn was_contacted(listener: &TcpListener) -> bool {
        listener.set_nonblocking(true).unwrap();
        match listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_environment_arguments_or_working_directory() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let mut cli = sandbox.cli();
        assert_eq!(
            environment::Host::get_environment(&mut cli).unwrap(),
            vec![]
        );
        assert_eq!(
            environment::Host::get_arguments(&mut cli).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(environment::Host::initial_cwd(&mut cli).unwrap(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_preopened_directories() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let directories = preopens::Host::get_directories(&mut sandbox.filesystem()).unwrap();
        assert!(directories.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_is_empty() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let handle = stdin::Host::get_stdin(&mut sandbox.cli()).unwrap();
        let stream = sandbox.table.get_mut(&handle).unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                stream.ready().await;
                match stream.read(64) {
                    Ok(bytes) if bytes.is_empty() => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("stdin answers at once");
        assert!(matches!(read, Err(StreamError::Closed)), "{read:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_reaches_the_redis_address_and_no_other() {
        let redis = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let redis_addr = redis.local_addr().unwrap();
        let other_addr = other.local_addr().unwrap();
        let mut sandbox = sandbox_for(&format!("redis://{redis_addr}")).await;

        assert_eq!(
            wasi_connect(&mut sandbox, other_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        assert!(!was_contacted(&other), "the denied port saw a connection");

        wasi_connect(&mut sandbox, redis_addr).await.unwrap();
        assert!(was_contacted(&redis));
    }

    /// The store is opened with one seed; the other masters are discovered by the guest and
    /// allowed because the cluster itself reports them; any other port stays unreachable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cluster_url_reaches_the_cluster_nodes_and_no_other_port() {
        let cluster = crate::redis_cluster::RedisCluster::start(3).unwrap();
        let stranger = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let stranger_addr = stranger.local_addr().unwrap();
        let policy = NetworkPolicy::for_url(
            &cluster.seed_url(0),
            &taskstore::config::TlsSettings::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut sandbox = Sandboxed {
            wasi: wasi_context(policy, &GuestOutput::new(1024)),
            table: ResourceTable::new(),
        };
        assert_eq!(
            wasi_connect(&mut sandbox, stranger_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        for node in cluster.addrs() {
            wasi_connect(&mut sandbox, node).await.unwrap();
        }
        // Asked again after the cluster was consulted, the stranger is still refused.
        assert_eq!(
            wasi_connect(&mut sandbox, stranger_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        assert!(
            !was_contacted(&stranger),
            "the denied port saw a connection"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn binding_a_port_and_udp_are_denied() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let mut sockets = sandbox.sockets();
        let network = instance_network::Host::instance_network(&mut sockets).unwrap();
        let socket =
            tcp_create_socket::Host::create_tcp_socket(&mut sockets, IpAddressFamily::Ipv4)
                .unwrap();
        let local: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let bound = sockets
            .start_bind(Resource::new_borrow(socket.rep()), network, local.into())
            .await;
        assert_eq!(bound.map_err(code), Err(ErrorCode::AccessDenied));

        let udp =
            udp_create_socket::Host::create_udp_socket(&mut sockets, IpAddressFamily::Ipv4).await;
        assert_eq!(udp.map(|_| ()).map_err(code), Err(ErrorCode::AccessDenied));
    }
}
