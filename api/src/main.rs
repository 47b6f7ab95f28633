use std::process::ExitCode;

use api::config::Config;
use observability::telemetry::TelemetryConfig;

// mimalloc: a list page spent 39% of its instructions in glibc's malloc and free; with
// mimalloc it costs 34% fewer instructions, a GET by id 12% fewer (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match observability::telemetry::init(&TelemetryConfig {
        log_format: config.log_format,
        otlp_endpoint: config.otel_endpoint.as_deref(),
        service_name: &config.otel_service_name,
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let served = serve(config).await;
    if let Err(error) = &served {
        tracing::error!("{error}");
    }
    telemetry.shutdown();
    if served.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    api::raise_open_files_limit();
    let listeners = api::Listeners::bind(&config).await?;
    let app = api::build(config).await?;
    tracing::info!(
        public = %listeners.public_addr(),
        admin = %listeners.admin_addr(),
        "serving: Swagger UI at /docs, metrics at /metrics on the admin address"
    );
    api::run(app, listeners).await?;
    Ok(())
}
