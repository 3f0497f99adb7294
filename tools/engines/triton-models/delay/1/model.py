"""Doubles its input after a delay per batch (config parameter delay_seconds)."""

import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay = float(params.get("delay_seconds", {}).get("string_value", "0"))

    def execute(self, requests):
        time.sleep(self.delay)  # one batch at a time: what waits meanwhile is Triton's pending count
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", data * 2)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
