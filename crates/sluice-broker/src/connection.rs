//! One client connection: reads size-prefixed frames (refusing oversized
//! ones before allocating), hands each request to [`crate::dispatch`] and
//! writes the responses back in order, one request at a time. Anything that
//! goes wrong here (a bad frame, a failed write, a protocol violation the
//! dispatcher reports) closes this connection only, never the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::dispatch::{self, Outcome};
use crate::state::Shared;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("frame of {0} bytes exceeds --max-request-bytes ({1})")]
    TooLarge(i64, usize),
    #[error("negative frame size {0}")]
    Negative(i32),
    #[error("connection closed mid-frame after {0} of {1} bytes")]
    Truncated(usize, usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one size-prefixed frame; `None` at a clean end of stream. The
/// buffer grows as bytes arrive, so a client announcing a large frame and
/// sending nothing holds no memory.
async fn read_frame(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut size = [0u8; 4];
    match reader.read(&mut size[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut size[1..]).await?,
    };
    let size = i32::from_be_bytes(size);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge(size as i64, max));
    }
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        if buf.capacity() == buf.len() {
            buf.reserve((size - buf.len()).min(1 << 20));
        }
        let want = size - buf.len();
        let n = reader.read_buf(&mut (&mut buf).limit(want)).await?;
        if n == 0 {
            return Err(FrameError::Truncated(buf.len(), size));
        }
    }
    Ok(Some(buf.freeze()))
}

/// Writes a frame given in pieces with vectored writes.
async fn write_chunks(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = write.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                first += 1;
            } else {
                bytes::Buf::advance(c, n);
                n = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

/// Serves one client until it leaves, idles out, misbehaves or the broker
/// shuts down.
pub(crate) async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared.metrics.connections_open.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut shutdown = shared.shutdown.clone();
    let idle = shared.config.idle_timeout;
    loop {
        let frame = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(idle) => {
                tracing::debug!("closing idle connection from {peer}");
                break;
            }
            frame = read_frame(&mut reader, shared.config.max_request_bytes) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!("connection from {peer} failed: {e}");
                break;
            }
            Err(e) => {
                shared.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!("closing connection from {peer}: {e}");
                break;
            }
        };
        shared
            .metrics
            .bytes_in
            .fetch_add(frame.len() as u64 + 4, Relaxed);
        match dispatch::handle(&shared, frame, peer).await {
            Outcome::Respond(chunks) => {
                let len: usize = chunks.iter().map(|c| c.len()).sum();
                shared.metrics.bytes_out.fetch_add(len as u64, Relaxed);
                if let Err(e) = write_chunks(&mut write, chunks).await {
                    tracing::debug!("writing to {peer} failed: {e}");
                    break;
                }
            }
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                shared.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!("closing connection from {peer}: {reason}");
                break;
            }
        }
    }
    let _ = write.shutdown().await;
    shared.metrics.connections_open.fetch_sub(1, Relaxed);
}
