"""Layers: one small module per family."""
from fastnn.layers import activations as _activations
from fastnn.layers import pooling as _pooling
from fastnn.layers.activations import (
    ELU,
    GELU,
    SELU,
    Activation,
    Identity,
    LeakyReLU,
    Mish,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from fastnn.layers.base import Layer, ParamSpec
from fastnn.layers.conv import Conv1D, Conv2D
from fastnn.layers.core import Flatten, Permute, Reshape
from fastnn.layers.dense import Dense
from fastnn.layers.dropout import Dropout
from fastnn.layers.embedding import Embedding, Masking
from fastnn.layers.merge import Add, Concatenate
from fastnn.layers.normalization import BatchNorm, LayerNorm
from fastnn.layers.pooling import (
    AveragePooling1D,
    AveragePooling2D,
    AvgPool1D,
    AvgPool2D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    MaxPool1D,
    MaxPool2D,
    MaxPooling1D,
    MaxPooling2D,
)
from fastnn.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from fastnn.layers.residual import Residual, linear_decay, residual_stack

# class name -> class, for rebuilding layers from their configs (saving and loading models)
REGISTRY = {**_activations.CLASSES, **_pooling.CLASSES,
            **{cls.__name__: cls for cls in (Dense, Flatten, Reshape, Permute, Add, Concatenate, BatchNorm, LayerNorm,
                                             Dropout, Residual, Embedding, Masking, Conv1D, Conv2D,
                                             SimpleRNN, LSTM, GRU, Bidirectional)}}

__all__ = ["Layer", "ParamSpec", "Activation", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
           "GELU", "SiLU", "ELU", "SELU", "Softplus", "Mish",
           "Dense", "Conv1D", "Conv2D", "Flatten", "Reshape", "Permute", "Add", "Concatenate", "BatchNorm",
           "LayerNorm", "Dropout", "Residual", "Embedding", "Masking",
           "linear_decay", "residual_stack", "SimpleRNN", "LSTM", "GRU", "Bidirectional",
           "MaxPool2D", "AvgPool2D", "MaxPool1D", "AvgPool1D", "GlobalMaxPooling2D", "GlobalAveragePooling2D",
           "GlobalMaxPooling1D", "GlobalAveragePooling1D", "MaxPooling2D", "AveragePooling2D", "MaxPooling1D",
           "AveragePooling1D"]
