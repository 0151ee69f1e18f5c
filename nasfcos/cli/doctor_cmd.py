"""``nasfcos doctor``: what this machine can run, with the exact fix for each mismatch."""

from __future__ import annotations

from nasfcos.cli import args as A


def main(argv: list[str]) -> int:
    """Entry point of ``nasfcos doctor``: exit 0 when every backend found can run, else 1."""
    p = A.Parser(
        prog="nasfcos doctor",
        description="Check this machine against the GPU support matrix: the CPU and its vector "
                    "extensions (AVX-512, VNNI, BF16, AMX), each NVIDIA GPU with its compute "
                    "capability and memory, the driver's CUDA version, the torch build and its "
                    "compiled arch list, TensorRT and ONNX Runtime with its providers.  Prints "
                    "one line per backend and device, with the exact fix for each one that "
                    "cannot run.  Exit status 0 when every backend found can run, 1 otherwise.  "
                    "Every GPU verb runs the same check before any work.",
        epilog="examples:\n  nasfcos doctor\n  nasfcos doctor --json")
    A.add_json(p, "print the report (facts, findings, verdict) as JSON on stdout")
    p.add_argument("--extras", action="store_true",
                   help="print only the extras that install TensorRT and onnxruntime-gpu for "
                        "this GPU ('trt gpu', or 'trt-volta gpu-volta' on a V100) and exit 0 "
                        "(used by make gpu-check)")
    args = p.parse_args(argv)

    from nasfcos.runtime import doctor

    if args.extras:
        print(*doctor.extras())
        return 0
    rep = doctor.report()
    if args.json:
        A.print_json(rep)
    else:
        print(doctor.text(rep))
    return 0 if rep["ok"] else 1
