//! Calls the calculator: `calculator-client --connect 127.0.0.1:7001 divide 7 2`.

use clap::{Parser, ValueEnum};
use examples::proto::{BinaryOp, CalculatorClient};

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    Add,
    Divide,
}

#[derive(Parser)]
#[command(about = "mprpc calculator client")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    connect: String,
    /// Operation.
    op: Op,
    /// Left operand.
    #[arg(allow_negative_numbers = true)]
    a: i64,
    /// Right operand.
    #[arg(allow_negative_numbers = true)]
    b: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = CalculatorClient::new(mprpc::Client::connect_lazy(args.connect));
    let op = BinaryOp {
        a: args.a,
        b: args.b,
    };
    let result = match args.op {
        Op::Add => client.add(&op).await,
        Op::Divide => client.divide(&op).await,
    };
    match result {
        Ok(value) => println!("{}", value.value),
        Err(err) => {
            eprintln!("error: {err} (code {})", err.code());
            std::process::exit(1);
        }
    }
    Ok(())
}
