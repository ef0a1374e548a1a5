"""comfy.samplers.KSampler's option lists (a subset)."""


class KSampler:
    SCHEDULERS = ["normal", "karras", "exponential", "simple"]
    SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
