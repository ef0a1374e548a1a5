"""The parts of comfy.model_management the pack calls, on CPU; calls are recorded for the tests."""

import torch

CALLS = []
interrupt_processing = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    CALLS.append(("load_models_gpu", list(models), force_full_load))


def load_model_gpu(model):
    return load_models_gpu([model])


def soft_empty_cache(force=False):
    CALLS.append(("soft_empty_cache",))


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()
