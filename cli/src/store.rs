//! `skython store copy`: moves a store's users, functions, state and recent invocations into
//! another, e.g. from a one-machine install's SQLite file to the cluster's MongoDB.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use skython_store::StoreLocation;
use skython_store::copy::{Progress, Stage, copy};

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy users (with their tokens), functions, all state and recent invocations from one
    /// store into another. Values already at the destination are replaced; running it again
    /// is safe. Stop the servers using the source first, or writes made meanwhile are missed.
    Copy(CopyArgs),
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// The store to read: sqlite://PATH (e.g. sqlite://.skython/skython.db) or mongodb://…
    #[arg(long, value_parser = location)]
    from: StoreLocation,
    /// The store to write: sqlite://PATH or mongodb://HOST/DATABASE.
    #[arg(long, value_parser = location)]
    to: StoreLocation,
    /// Newest invocations (with their logs) to copy per function.
    #[arg(long, default_value_t = 100)]
    invocations: usize,
}

pub fn location(s: &str) -> Result<StoreLocation, String> {
    StoreLocation::parse(s).map_err(|e| e.to_string())
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let StoreCommand::Copy(a) = args.command;
    if a.from == a.to {
        bail!("--from and --to are the same store ({})", a.from);
    }
    // Opening a SQLite path creates it: a mistyped source would copy nothing, silently.
    if let StoreLocation::Sqlite(path) = &a.from
        && !path.exists()
    {
        bail!("--from: there is no SQLite store at {}", path.display());
    }
    let from = a
        .from
        .open()
        .await
        .with_context(|| format!("opening {}", a.from))?;
    let to =
        a.to.open()
            .await
            .with_context(|| format!("opening {}", a.to))?;
    // A running server's workers cache what its SQLite file holds: it must be the one writer.
    let _held_until_done = match &a.to {
        StoreLocation::Sqlite(path) => Some(crate::up::lock_sqlite(
            path,
            "stop it before copying into its store",
        )?),
        StoreLocation::MongoDb(_) => None,
    };
    let mut bars = Bars::default();
    let copied = copy(&*from, &*to, a.invocations, &mut |p| bars.show(p))
        .await
        .with_context(|| format!("copying {} to {}", a.from, a.to))?;
    bars.finish();
    println!(
        "copied {} users, {} functions, {} state entries and {} invocations to {}",
        copied.users, copied.functions, copied.state_entries, copied.invocations, a.to
    );
    Ok(())
}

/// One progress bar per stage, a spinner with a count where the total is unknown.
#[derive(Default)]
struct Bars {
    current: Option<(Stage, ProgressBar)>,
}

impl Bars {
    fn show(&mut self, p: Progress) {
        if self.current.as_ref().is_none_or(|(s, _)| *s != p.stage) {
            self.finish();
            let (bar, template) = match p.total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{msg:>12} [{bar:30}] {pos}/{len} {elapsed}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{msg:>12} {spinner} {pos} {elapsed}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message(match p.stage {
                Stage::Users => "users",
                Stage::Functions => "functions",
                Stage::State => "state",
                Stage::Invocations => "invocations",
            });
            self.current = Some((p.stage, bar));
        }
        if let Some((_, bar)) = &self.current {
            bar.set_position(p.done);
        }
    }

    fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.finish();
        }
    }
}
