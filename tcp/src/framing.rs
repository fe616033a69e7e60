//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766): a two-byte length,
//! then the message. Reading one is bounded in time twice over: the wait
//! for a query to start (idle), and the time to receive it once it has
//! (a slow sender is cut).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

/// Bytes past a query its answer may use (our answers are the question
/// plus an OPT record at most).
pub const ANSWER_ROOM: usize = 512;

/// Why no message was read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed the connection between messages.
    Closed,
    /// No message started within the idle timeout.
    Idle,
    /// A message started but did not arrive within the I/O timeout, or the
    /// peer closed the connection in the middle of it.
    Slow,
    /// The connection reached its maximum duration.
    Expired,
    /// The length is shorter than a DNS header.
    Short,
    /// A socket error.
    Io(std::io::ErrorKind),
}

/// Reads one message into `buf` (resized to the message plus
/// [`ANSWER_ROOM`]); returns its length.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
    io: Duration,
    deadline: Instant,
) -> Result<usize, ReadError> {
    let idle_until = Instant::now() + idle;
    let (until, late) = if idle_until < deadline {
        (idle_until, ReadError::Idle)
    } else {
        (deadline, ReadError::Expired)
    };
    let first = match timeout_at(until, r.read_u8()).await {
        Err(_) => return Err(late),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ReadError::Closed);
        }
        Ok(Err(e)) => return Err(ReadError::Io(e.kind())),
        Ok(Ok(b)) => b,
    };
    let rest = async {
        let second = r.read_u8().await?;
        let len = usize::from(u16::from_be_bytes([first, second]));
        if len < 12 {
            return Ok(Err(ReadError::Short));
        }
        buf.clear();
        buf.resize(len + ANSWER_ROOM, 0);
        r.read_exact(&mut buf[..len]).await?;
        Ok::<_, std::io::Error>(Ok(len))
    };
    match timeout(io, rest).await {
        Err(_) => Err(ReadError::Slow),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::Slow),
        Ok(Err(e)) => Err(ReadError::Io(e.kind())),
        Ok(Ok(r)) => r,
    }
}

/// Appends `msg` with its length prefix to `out` (a message too long for
/// the prefix is left out: none of ours is).
pub fn frame_into(out: &mut Vec<u8>, msg: &[u8]) {
    if let Ok(len) = u16::try_from(msg.len()) {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(msg);
    }
}

/// Writes `bytes` within `io`. False if they could not be written in time
/// (a peer that stopped reading) or at all.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], io: Duration) -> bool {
    matches!(timeout(io, w.write_all(bytes)).await, Ok(Ok(())))
}

/// Writes `msg` with its length prefix, in one write where possible,
/// within `io`. False if it could not be written in time or at all.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8], io: Duration) -> bool {
    if msg.len() > usize::from(u16::MAX) {
        return false;
    }
    let mut framed = Vec::with_capacity(msg.len() + 2);
    frame_into(&mut framed, msg);
    write_all(w, &framed, io).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test(start_paused = true)]
    async fn messages_are_read_and_every_way_of_failing_is_named() {
        let ms = Duration::from_millis;
        let mut buf = Vec::new();
        let mut ok: &[u8] = &[0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(
            read_message(&mut ok, &mut buf, ms(100), ms(100), far()).await,
            Ok(12)
        );
        assert_eq!(&buf[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(buf.len(), 12 + ANSWER_ROOM);
        let mut empty: &[u8] = &[];
        assert_eq!(
            read_message(&mut empty, &mut buf, ms(100), ms(100), far()).await,
            Err(ReadError::Closed)
        );
        let mut short: &[u8] = &[0, 5, 1, 2, 3, 4, 5];
        assert_eq!(
            read_message(&mut short, &mut buf, ms(100), ms(100), far()).await,
            Err(ReadError::Short)
        );
        let mut cut: &[u8] = &[0, 40, 1, 2, 3];
        assert_eq!(
            read_message(&mut cut, &mut buf, ms(100), ms(100), far()).await,
            Err(ReadError::Slow),
            "closed mid-message"
        );
        // A peer that sends nothing: idle; one that starts and stalls: slow.
        let (mut client, mut server) = tokio::io::duplex(64);
        assert_eq!(
            read_message(&mut server, &mut buf, ms(100), ms(1000), far()).await,
            Err(ReadError::Idle)
        );
        client.write_all(&[0, 30, 1]).await.unwrap();
        assert_eq!(
            read_message(&mut server, &mut buf, ms(100), ms(200), far()).await,
            Err(ReadError::Slow)
        );
        // The connection's deadline comes before the idle timeout.
        let soon = Instant::now() + ms(50);
        assert_eq!(
            read_message(&mut server, &mut buf, ms(100), ms(200), soon).await,
            Err(ReadError::Expired)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_write_in_time() {
        let (_client, mut server) = tokio::io::duplex(16);
        let big = vec![7u8; 100];
        assert!(!write_message(&mut server, &big, Duration::from_millis(100)).await);
        let (mut client, mut server) = tokio::io::duplex(1024);
        assert!(write_message(&mut server, &[1, 2, 3], Duration::from_millis(100)).await);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0, 3, 1, 2, 3]);
    }
}
