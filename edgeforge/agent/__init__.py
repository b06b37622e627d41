"""The device agent: `edgeforge agent serve` (edgeforge.agent.server), the server side of the
protocol in edgeforge.runtimes.remote. Torch-free: a device needs only its runtime."""
