"""folder_paths with ComfyUI's function names; the tests set the folders."""

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
output_directory = os.path.join(os.getcwd(), "output")
input_directory = os.path.join(os.getcwd(), "input")
temp_directory = os.path.join(os.getcwd(), "temp")
user_directory = os.path.join(os.getcwd(), "user")
folder_names_and_paths = {"loras": ([], supported_pt_extensions), "checkpoints": ([], supported_pt_extensions)}


def get_output_directory():
    return output_directory


def get_input_directory():
    return input_directory


def get_user_directory():
    return user_directory


def get_temp_directory():
    return temp_directory


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, extensions = folder_names_and_paths.setdefault(folder_name, ([], set(supported_pt_extensions)))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return list(folder_names_and_paths.get(folder_name, ([], set()))[0])


def get_filename_list(folder_name):
    paths, extensions = folder_names_and_paths.get(folder_name, ([], set()))
    names = set()
    for base in paths:
        for root, _, files in os.walk(base, followlinks=True):
            for name in files:
                if os.path.splitext(name)[1].lower() in extensions:
                    names.add(os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/"))
    return sorted(names)


def get_full_path(folder_name, filename):
    for base in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        path = os.path.join(base, os.path.normpath(filename))
        if os.path.isfile(path):
            return path
    return None
