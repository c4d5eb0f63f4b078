//! `harness`: the referee of the existence proof. Loads independent rseq libraries (and
//! plugins written against `harness/include/rseq_harness_plugin.h`) into one process, runs
//! them together in the same threads under disturbance, checks every invariant, and replays
//! failures from their seed. See `harness --help`.

mod cli;
mod cpu;
mod disturb;
mod engine;
mod invariants;
mod participants;
mod preload;
mod report;
mod scenario;
mod schedule;
mod soak;
mod state;
mod stuck;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if let Some(job) = std::env::var_os(supervisor::ENV_JOB) {
        // The run process (re-executed by the supervisor).
        return match supervisor::child_main(&PathBuf::from(job)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("harness (run process): {e:#}");
                ExitCode::from(supervisor::EXIT_SETUP)
            }
        };
    }
    let cli = cli::Cli::parse();
    let r = match cli.command {
        Some(cli::Command::Replay(r)) => supervisor::replay(&r.file, &r.output),
        Some(cli::Command::Run(a)) => run_cmd(&a),
        Some(cli::Command::Soak(a)) => soak::soak(&a),
        None => run_cmd(&cli.run),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            ExitCode::from(supervisor::EXIT_SETUP)
        }
    }
}

fn run_cmd(a: &cli::RunArgs) -> anyhow::Result<u8> {
    let mut s = a.scenario()?;
    let seed = *s.seed.get_or_insert_with(rand::random);
    println!("seed: {seed}");
    let job = supervisor::make_job(s, !a.output.no_progress)?;
    if a.print_scenario {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "scenario": job.scenario, "libs": job.libs, "plan": job.plan })
            )?
        );
        return Ok(supervisor::EXIT_OK);
    }
    supervisor::execute(job, &a.output)
}
