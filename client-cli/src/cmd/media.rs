//! `quip send-file` and `quip download`: resumable transfers with a
//! progress bar on a terminal.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use quip_client::Client;
use quip_protocol::v1::{self, ErrorCode};
use serde_json::json;

use super::out::{Out, hex};
use super::{Ctx, Target, send_to};

pub async fn send_file(
    ctx: &Ctx,
    target: Target,
    path: PathBuf,
    caption: Option<String>,
    content_type: Option<String>,
) -> anyhow::Result<()> {
    ctx.report(
        async |c| upload_and_send(c, &ctx.home, &ctx.out, target, &path, caption, content_type).await,
        |(sent, media)| {
            format!(
                "sent {} as seq {} in chat {} (media {})",
                path.display(),
                sent.seq,
                sent.chat_id,
                media.media_id
            )
        },
        |(sent, media)| {
            json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq, "media": media.media_id,
                "size": media.size, "sha256": hex(&media.sha256)})
        },
    )
    .await
}

pub async fn download(ctx: &Ctx, media_id: String, output: Option<PathBuf>) -> anyhow::Result<()> {
    ctx.report(
        async |c| fetch(c, &ctx.out, &media_id, output).await,
        |(path, media)| format!("saved {} ({} bytes, sha256 verified)", path.display(), media.size),
        |(path, media)| json!({"type": "downloaded", "media": media.media_id, "path": path, "size": media.size}),
    )
    .await
}

/// A byte progress bar on a terminal; hidden for --json or when stderr is
/// not a terminal.
fn progress_bar(out: &Out, what: &str) -> indicatif::ProgressBar {
    if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn on_progress(bar: &indicatif::ProgressBar) -> impl FnMut(quip_client::Progress) + '_ {
    move |p| match p {
        quip_client::Progress::Started { offset, total, .. } => {
            bar.set_length(total);
            bar.set_position(offset);
        }
        quip_client::Progress::At(n) => bar.set_position(n),
    }
}

/// Uploads a file (resuming an interrupted upload of the same bytes, whose
/// id is kept in $QUIP_HOME/uploads/) and sends it.
async fn upload_and_send(
    client: &Client,
    home: &Path,
    out: &Out,
    target: Target,
    path: &Path,
    caption: Option<String>,
    content_type: Option<String>,
) -> anyhow::Result<(v1::SendResponse, v1::Media)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let (size, sha256) = quip_client::media::hash(&mut file)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let pending = home.join("uploads").join(hex(&sha256));
    let content_type = content_type.unwrap_or_else(|| mime_guess::from_path(path).first_or_octet_stream().to_string());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut spec = quip_client::UploadSpec {
        size,
        sha256,
        content_type,
        file_name,
        resume: std::fs::read_to_string(&pending).ok().map(|s| s.trim().to_owned()),
    };
    let bar = progress_bar(out, "uploading");
    let remember = |p: &quip_client::Progress| {
        if let quip_client::Progress::Started { upload_id, .. } = p {
            let _ = std::fs::create_dir_all(home.join("uploads"));
            let _ = std::fs::write(&pending, upload_id);
        }
    };
    let mut track = on_progress(&bar);
    let mut r = client
        .upload(&spec, &mut file, |p| {
            remember(&p);
            track(p);
        })
        .await;
    if spec.resume.is_some()
        && matches!(
            r.as_ref().map_err(|e| e.code()),
            Err(Some(ErrorCode::NotFound | ErrorCode::InvalidArgument))
        )
    {
        // The earlier upload is gone (cleaned up): start over.
        spec.resume = None;
        r = client
            .upload(&spec, &mut file, |p| {
                remember(&p);
                track(p);
            })
            .await;
    }
    bar.finish_and_clear();
    let done = r?;
    let _ = std::fs::remove_file(&pending);
    let media = done.media.ok_or_else(|| anyhow!("server sent no media"))?;
    let content = v1::Content {
        text: caption.unwrap_or_default(),
        media: Some(v1::Media {
            media_id: media.media_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sent = send_to(client, target, content, None).await?;
    Ok((sent, media))
}

/// Downloads into a hidden partial file next to the destination, continuing
/// one left by an earlier attempt, verifies the SHA-256, then renames it.
async fn fetch(
    client: &Client,
    out: &Out,
    media_id: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, v1::Media)> {
    use tokio::io::AsyncSeekExt;
    let dir = match &output {
        Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        None => PathBuf::new(),
    };
    let part = dir.join(format!(".{media_id}.part"));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .await
        .with_context(|| format!("opening {}", part.display()))?;
    let have = file.seek(std::io::SeekFrom::End(0)).await?;
    let bar = progress_bar(out, "downloading");
    let r = client.download(media_id, have, 0, &mut file, on_progress(&bar)).await;
    bar.finish_and_clear();
    let ready = match r {
        Ok(r) => r,
        Err(e) => {
            if e.code().is_some() {
                drop(file);
                let _ = std::fs::remove_file(&part); // refused: nothing to resume
            }
            return Err(e.into());
        }
    };
    let media = ready.media.ok_or_else(|| anyhow!("server sent no media"))?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let (size, sha256) = quip_client::media::hash(&mut file).await?;
    drop(file);
    if size != media.size || sha256[..] != media.sha256[..] {
        let _ = std::fs::remove_file(&part);
        bail!("the downloaded bytes do not match the media's size and SHA-256; removed, run again");
    }
    let name = Path::new(&media.file_name)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| media_id.into());
    let dest = output.unwrap_or_else(|| PathBuf::from(name));
    std::fs::rename(&part, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok((dest, media))
}
