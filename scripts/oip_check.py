#!/usr/bin/env python3
"""Checks an Open Inference Protocol V2 gRPC server with the stock Triton client.

    scripts/oip_check.py --url 127.0.0.1:50054 --model fraud

Does what a KServe or Triton user does first, with `tritonclient.grpc` and nothing of
millrace's own: asks whether the server is live, reads the model's metadata (it must
declare an input named `features`), and runs one inference on a [2, 2] FP32 tensor,
which must come back as two probabilities in (0, 1).

Prints one JSON report on stdout. Exit status: 0 when every check passed, 1 when one
failed, 2 when tritonclient is not installed (scripts/install-deps.sh installs it).
"""

import argparse
import json
import sys

# Two rows of model input; the integration test knows what the test model answers.
ROWS = [[1.0, 10.0], [20.0, 150.0]]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="host:port of the gRPC server")
    parser.add_argument("--model", required=True, help="model name, e.g. fraud")
    parser.add_argument("--input", default="features", help="input tensor the metadata must list")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    return parser.parse_args(argv)


def run(args, np, grpcclient, InferenceServerException):
    report = {"url": args.url, "model": args.model, "checks": []}

    def check(name, ok, detail):
        report["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        return ok

    try:
        client = grpcclient.InferenceServerClient(url=args.url)

        live = client.is_server_live(client_timeout=args.timeout)
        check("server_live", live is True, f"is_server_live() returned {live!r}")

        metadata = client.get_model_metadata(args.model, client_timeout=args.timeout)
        tensors = lambda ts: [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts
        ]
        inputs, outputs = tensors(metadata.inputs), tensors(metadata.outputs)
        report["metadata"] = {
            "name": metadata.name,
            "versions": list(metadata.versions),
            "platform": metadata.platform,
            "inputs": inputs,
            "outputs": outputs,
        }
        listed = any(t["name"] == args.input for t in inputs)
        if not check(
            "metadata_lists_input",
            listed,
            f"inputs {[t['name'] for t in inputs]} {'include' if listed else 'lack'} {args.input!r}",
        ):
            return report
        if not check("metadata_lists_output", bool(outputs), f"outputs {outputs}"):
            return report

        output_name = outputs[0]["name"]
        tensor = grpcclient.InferInput(args.input, [len(ROWS), len(ROWS[0])], "FP32")
        tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
        result = client.infer(
            args.model,
            [tensor],
            outputs=[grpcclient.InferRequestedOutput(output_name)],
            client_timeout=args.timeout,
        )
        try:
            values = result.as_numpy(output_name)
        except ValueError as e:
            # tritonclient reads numeric outputs from raw_output_contents only.
            check(
                "infer_output_readable",
                False,
                f"as_numpy({output_name!r}) failed ({e}); a stock client needs the values "
                f"in raw_output_contents; the response was {result.get_response()}",
            )
            return report
        if not check("infer_output_present", values is not None, f"output {output_name!r}"):
            return report
        probabilities = [float(v) for v in values.reshape(-1)]
        report["probabilities"] = probabilities
        check(
            "infer_two_probabilities",
            len(probabilities) == len(ROWS) and all(0.0 < p < 1.0 for p in probabilities),
            f"{output_name} = {probabilities} for input {ROWS}",
        )
    except InferenceServerException as e:
        check("rpc", False, f"{e.status()}: {e.message()}")
    except Exception as e:  # anything else is a failed check too, reported, not a traceback
        check("unexpected", False, f"{type(e).__name__}: {e}")
    return report


def main(argv):
    args = parse_args(argv)
    try:
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as e:
        print(json.dumps({
            "ok": False,
            "error": f"cannot import tritonclient.grpc ({e}): run scripts/install-deps.sh",
        }, indent=2))
        return 2
    report = run(args, np, grpcclient, InferenceServerException)
    report["ok"] = bool(report["checks"]) and all(c["ok"] for c in report["checks"])
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
