# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The MONAI Label app's tasks: bundle infer/train wrappers, ensemble-uncertainty scoring and active learning."""
