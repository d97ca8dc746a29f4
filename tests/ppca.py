"""The exact log-likelihood of probabilistic PCA, the correctness anchor of the linear VAE."""

import numpy as np


def ppca_log_likelihood(train, test, code_size):
    """Tipping and Bishop's maximum-likelihood pPCA, fitted on `train`, mean log-density of `test`."""
    mean = train.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(train, rowvar=False, bias=True))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    noise = eigenvalues[code_size:].mean()
    loadings = eigenvectors[:, :code_size] * np.sqrt(eigenvalues[:code_size] - noise)
    covariance = loadings @ loadings.T + noise * np.eye(train.shape[1])
    centred = test - mean
    _, log_det = np.linalg.slogdet(covariance)
    mahalanobis = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)
    return np.mean(-0.5 * (train.shape[1] * np.log(2 * np.pi) + log_det + mahalanobis))
