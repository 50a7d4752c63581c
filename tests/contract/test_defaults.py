"""The stack starts the SCP with the SCP's own defaults: a parameter's default and the setting it feeds agree.

The template and the SCP once disagreed on MAXIMUM_PDU_SIZE (16382 against 262144) and nothing noticed.
"""

from __future__ import annotations

from dicom_store_scp.config import SETTINGS
from troposphere import Ref

from template_gen.parameters import PARAMETERS
from template_gen.service import CONTAINER_ENVIRONMENT


def test_every_parameter_fed_to_the_scp_defaults_to_the_scps_default():
    parameters = {parameter.name: parameter for parameter in PARAMETERS}
    settings = {setting.env: setting for setting in SETTINGS}
    compared = 0
    for variable, value in CONTAINER_ENVIRONMENT.items():
        if not (isinstance(value, Ref) and value.data["Ref"] in parameters):
            continue  # set from a resource or a condition, not from a parameter
        parameter = parameters[value.data["Ref"]]
        assert str(parameter.default) == settings[variable].default, (variable, parameter.name)
        compared += 1
    assert compared >= 15
