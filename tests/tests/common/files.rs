//! Files for upload tests that misbehave on purpose.

/// A file that yields `left` bytes of `inner`, then fails (a client
/// crashing mid-upload) or, with `stall`, never yields again (a sender that
/// went quiet with its stream open).
pub struct Cut<R> {
    pub inner: R,
    pub left: usize,
    pub stall: bool,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Cut<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return if self.stall {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(Err(std::io::Error::other("simulated crash")))
            };
        }
        let want = buf.remaining().min(self.left);
        let mut limited = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(want));
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        buf.advance(n);
        self.left -= n;
        r
    }
}

impl<R: tokio::io::AsyncSeek + Unpin> tokio::io::AsyncSeek for Cut<R> {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, pos: std::io::SeekFrom) -> std::io::Result<()> {
        std::pin::Pin::new(&mut self.inner).start_seek(pos)
    }
    fn poll_complete(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.inner).poll_complete(cx)
    }
}
